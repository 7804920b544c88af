"""Schema management: the ledger through Alembic, each adapter's tables through its metadata."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from gateway.config import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_ledger(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade_ledger(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def setup_adapters(settings: Settings) -> None:
    """Create each loaded adapter's tables in its tool database and seed them (idempotent)."""
    from gateway.db import resolve_database_url
    from gateway.tools.registry import load_adapter

    ledger_url = resolve_database_url(settings)
    for name in settings.adapters:
        adapter = load_adapter(name)
        if adapter.metadata is None:
            continue
        url = settings.tool_database_urls.get(name, ledger_url)
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                # Two processes may migrate at once (gateway and worker starting together).
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7316)")
                adapter.metadata.create_all(conn)
                if adapter.seed is not None:
                    adapter.seed(conn)
        finally:
            engine.dispose()


def migrate_all(settings: Settings) -> str:
    """Bring the ledger and every adapter's tables up to date; returns the ledger URL."""
    from gateway.db import resolve_database_url

    url = resolve_database_url(settings)
    upgrade_ledger(url)
    setup_adapters(settings)
    return url

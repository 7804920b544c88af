"""What the benchmark stands on: the database, a key, a real gateway server and tool worker,
and machine facts.

The server and the worker are child processes (``LocalGateway``, ``LocalWorker``) so the figures
include everything production pays for: HTTP parsing, the thread pool, JSON, the broker, and the
ledger writes of every call.

With a configured database the benchmark writes there: it raises the stock of ``SKU``, adds
copies of that product for the extra sessions, and commits orders under tenant ``bench``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from gateway.children import LocalWorker, settings_env
from gateway.config import Settings
from lab.servers import LocalGateway

TENANT = "bench"
ADAPTER = "demo"
SKU = "filter"
BENCH_STOCK = 1_000_000


def bench_settings(settings: Settings, home: Path) -> Settings:
    """The configured database when there is one, else the embedded one under ``home`` (not
    the user's default home, so benchmark rows never mix with a demo's)."""
    if ADAPTER not in settings.adapters:
        raise ValueError(f"the benchmark needs the {ADAPTER!r} adapter; loaded: "
                         f"{settings.adapters}")
    if settings.embedded:
        return settings.model_copy(update={"home": home})
    return settings


def bench_sku(index: int) -> str:
    """The product session ``index`` adds to its order: ``SKU`` itself for the first session, a
    copy of it for every other one. A held ``add_item`` keeps the product's row locked until
    its turn is decided, so sessions sharing one product would queue behind each other's whole
    turns (up to ``lock_timeout``) and the figures would measure that queue, not the gateway."""
    return SKU if index == 0 else f"{SKU}-bench-{index:02d}"


def prepare_database(settings: Settings, sessions: int) -> tuple[str, str]:
    """Migrate; give ``SKU`` and its per-session copies plentiful stock; returns (ledger URL,
    demo tool database URL)."""
    from gateway.migrate import migrate_all

    url = migrate_all(settings)
    tool_url = settings.tool_database_urls.get(ADAPTER, url)
    copies = [{"sku": bench_sku(i), "stock": BENCH_STOCK} for i in range(1, sessions)]
    engine = create_engine(tool_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE demo_products SET stock = :stock WHERE sku = :sku"),
                         {"stock": BENCH_STOCK, "sku": SKU})
            if copies:
                conn.execute(_COPY_PRODUCT, copies)
    finally:
        engine.dispose()
    return url, tool_url


_COPY_PRODUCT = text(
    f"""
    INSERT INTO demo_products (sku, name, price_cents, stock)
    SELECT :sku, name || ' (bench copy)', price_cents, :stock FROM demo_products
     WHERE sku = '{SKU}'
    ON CONFLICT (sku) DO UPDATE SET stock = EXCLUDED.stock
    """
)


def create_app_key(url: str, tenant: str = TENANT, name: str = "specgate bench gateway") -> str:
    """A fresh app key of ``tenant`` (secrets are shown once, so one per run)."""
    from gateway.auth.service import create_key
    from gateway.db import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        return create_key(engine, tenant, "app", name)[1]
    finally:
        engine.dispose()


def child_env(settings: Settings, url: str, held: int, concurrency: int) -> dict[str, str]:
    """The environment of both children: exactly the benchmark's settings, the gateway's held
    transactions raised for the sessions, and one worker thread per session, so neither task
    scenario measures a queue in front of the worker instead of the call."""
    return {
        **settings_env(settings, url),
        "SPECGATE_MAX_HELD_TRANSACTIONS": str(held),
        "SPECGATE_WORKER_CONCURRENCY": str(concurrency),
    }


def start_gateway(env: dict[str, str], log_path: Path) -> LocalGateway:
    """Start ``specgate serve`` on a free port, without a worker of its own."""
    return LocalGateway(env=env, log_path=log_path, worker=False).start()


def start_worker(env: dict[str, str], log_path: Path) -> LocalWorker:
    """Start ``specgate worker`` (task-runner calls and the plain Celery baseline)."""
    return LocalWorker(env=env, log_path=log_path).start()


def broker_kind(settings: Settings) -> str:
    """For the report: the task figures are mostly the broker's latency."""
    return "configured" if settings.broker_url else "ledger Postgres (kombu SQL transport)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(url: str) -> dict[str, Any]:
    """Facts needed to compare figures across machines: CPUs, Python, Postgres."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            postgres = conn.execute(text("SHOW server_version")).scalar()
    finally:
        engine.dispose()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "postgres": postgres,
    }

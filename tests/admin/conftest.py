"""Fixtures of the dashboard's tests: an in-process gateway for the API, a real gateway child
process and Debian's headless Chromium (through Playwright) for the pages. All of them against
the test session's embedded Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.auth.service import create_key
from gateway.children import settings_env
from gateway.config import Settings
from gateway.db import make_engine
from gateway.migrate import setup_adapters
from lab import screenshots
from lab.servers import LocalGateway
from tests.conftest import make_settings
from tests.gateway.helpers import Api

APPROVALS = {"*": ["demo.place_order"]}  # placing an order waits for an operator


def admin_settings(pg_home: Path, ledger_url: str, **overrides: Any) -> Settings:
    return make_settings(pg_home, ledger_url, approval_policy=APPROVALS, **overrides)


@dataclass
class Tenant:
    """One tenant's keys, as clients of one gateway."""

    name: str
    app: Api
    admin: Api

    def pending_order(self, sku: str = "filter") -> dict[str, Any]:
        """A session whose order waits for approval (prepared), its call and turn ids."""
        sid, tid = self.app.session()
        self.app.call(sid, "1", "create_order", arguments={"customer": "Ann"})
        self.app.call(sid, "2", "add_item", depends_on=["1"],
                      arguments={"order_id": "$1.order_id", "sku": sku, "quantity": 1})
        staged = self.app.call(sid, "3", "place_order", depends_on=["2"],
                               arguments={"order_id": "$1.order_id", "card_last4": "4242"})
        self.app.commit(sid, tid)
        return {"session": sid, "turn": tid, "call": staged["id"]}

    def held_call(self, customer: str = "Bob") -> dict[str, Any]:
        sid, tid = self.app.session()
        call = self.app.call(sid, "1", "create_order", arguments={"customer": customer})
        return {"session": sid, "turn": tid, "call": call["id"]}


World = tuple[Any, Tenant, Tenant]  # a client of the gateway, and two tenants on it


def new_tenant(ledger_url: str, client: httpx.Client, name: str | None = None) -> Tenant:
    name = name or f"t-{uuid.uuid4().hex[:8]}"
    engine = make_engine(ledger_url, pool_size=1)
    _, app_key = create_key(engine, name, "app")
    _, admin_key = create_key(engine, name, "admin")
    engine.dispose()
    return Tenant(name, Api(client, app_key), Api(client, admin_key))  # type: ignore[arg-type]


def settle(tenant: Tenant) -> None:
    """Leave nothing pending behind: deny waiting approvals (so no prepared transaction keeps
    the shop's rows locked for later tests) and cancel open turns."""
    screenshots.settle(tenant.admin.client, "test cleanup",  # type: ignore[arg-type]
                       tenant.admin.headers)


@pytest.fixture
def admin_world(pg_home: Path, ledger_url: str,
                gateway_factory: Any) -> Iterator[World]:
    """An in-process gateway (approvals for place_order) and two tenants on it."""
    settings = admin_settings(pg_home, ledger_url)
    setup_adapters(settings)
    client = gateway_factory(settings)
    acme, other = new_tenant(ledger_url, client), new_tenant(ledger_url, client)
    yield client, acme, other
    settle(acme)
    settle(other)


@pytest.fixture(scope="module")
def live_gateway(pg_home: Path, ledger_url: str) -> Iterator[LocalGateway]:
    """``specgate serve`` as a child process on the test database."""
    settings = admin_settings(pg_home, ledger_url)
    setup_adapters(settings)
    with LocalGateway(env=settings_env(settings, ledger_url),
                      log_path=pg_home / f"admin-gateway-{uuid.uuid4().hex[:6]}.log") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def live_client(live_gateway: LocalGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def acme(ledger_url: str, live_client: httpx.Client) -> Iterator[Tenant]:
    tenant = new_tenant(ledger_url, live_client)
    yield tenant
    settle(tenant)


@pytest.fixture
def other(ledger_url: str, live_client: httpx.Client) -> Iterator[Tenant]:
    tenant = new_tenant(ledger_url, live_client)
    yield tenant
    settle(tenant)


def audit_details(ledger_url: str, call_or_turn: str) -> list[dict[str, Any]]:
    engine = make_engine(ledger_url, pool_size=1)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT from_status, to_status, detail FROM call_events WHERE call_id = :i OR "
            "(call_id IS NULL AND turn_id = :i) ORDER BY id"), {"i": call_or_turn})
        found = [{"from": r.from_status, "to": r.to_status, "detail": r.detail} for r in rows]
    engine.dispose()
    return found


def ledger_sql(ledger_url: str, statement: str, **params: Any) -> None:
    """Change the ledger behind the gateway's back (to bring an expiry closer)."""
    engine = make_engine(ledger_url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(text(statement), params)
    engine.dispose()


def expire_turn_in(ledger_url: str, turn_id: str, seconds: int) -> None:
    ledger_sql(ledger_url, "UPDATE turns SET expires_at = now() + make_interval(secs => :s) "
               "WHERE id = :t", s=seconds, t=turn_id)

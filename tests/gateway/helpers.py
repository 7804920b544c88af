"""Test helpers: a thin REST client over the real app, and the shop's state for comparisons."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Row, create_engine, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from gateway.auth.service import create_key
from gateway.calls import placeholders
from gateway.db import make_engine
from lab.servers import LocalGateway
from tool_adapters.demo import ADAPTER
from tool_adapters.demo import schema as shop
from tool_adapters.sdk import ToolContext


@dataclass
class Api:
    client: TestClient
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, path: str, body: Any = None, expect: int | None = None,
             **headers: str) -> Any:
        response = self.client.post(path, json=body, headers={**self.headers, **headers})
        if expect is not None:
            assert response.status_code == expect, response.text
        return response

    def get(self, path: str, expect: int | None = 200) -> Any:
        response = self.client.get(path, headers=self.headers)
        if expect is not None:
            assert response.status_code == expect, response.text
        return response

    def session(self) -> tuple[str, str]:
        body = self.post("/v1/sessions", {}, expect=201).json()
        return body["id"], body["turns"][0]["id"]

    def call(self, sid: str, cid: int | str, tool: str, expect: int = 201, wait: float = 0,
             **kwargs: Any) -> dict[str, Any]:
        """Issue a call; ``tool`` is a demo tool's bare name or any ``adapter.tool``."""
        body = {"tool": tool if "." in tool else f"demo.{tool}", "client_call_id": cid,
                "arguments": kwargs.pop("arguments", {}), **kwargs}
        query = f"?wait={wait}" if wait else ""
        return self.post(f"/v1/sessions/{sid}/calls{query}", body, expect=expect).json()

    def commit(self, sid: str, tid: str, keep: list[Any] | None = None,
               expect: int = 200) -> dict[str, Any]:
        body = {} if keep is None else {"keep": keep}
        return self.post(f"/v1/sessions/{sid}/turns/{tid}/commit", body, expect=expect).json()

    def cancel_turn(self, sid: str, tid: str) -> dict[str, Any]:
        return self.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}, expect=200).json()

    def cancel(self, call_id: str, expect: int = 200) -> Any:
        return self.post(f"/v1/calls/{call_id}/cancel", {}, expect=expect).json()


def new_keys(ledger_url: str, tenant: str, *roles: str) -> list[str]:
    """Fresh API key secrets of ``tenant``, one per role given."""
    engine = make_engine(ledger_url, pool_size=1)
    try:
        return [create_key(engine, tenant, role)[1] for role in roles]
    finally:
        engine.dispose()


def ledger_sql(url: str, statement: str, **params: Any) -> list[Row[Any]]:
    """Run one statement on a connection and in a transaction of its own (as another client
    of the database would); its rows, none for a write."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def expire_approval(ledger_url: str, call_id: str) -> None:
    """Move a call's approval deadline into the past, as if its time had run out."""
    ledger_sql(ledger_url, "UPDATE calls SET approval_expires_at = now() - interval '1 second' "
               "WHERE id = :c", c=call_id)


def shop_state(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the shop's tables, ordered: equal states mean equal databases."""
    engine = create_engine(url, poolclass=NullPool)
    state = {}
    with engine.connect() as conn:
        for table in (shop.products, shop.orders, shop.order_items, shop.payments):
            rows = conn.execute(select(table).order_by(*table.primary_key.columns))
            state[table.name] = [dict(r._mapping) for r in rows]
    engine.dispose()
    return state


def sequential_run(url: str, calls: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """The reference: run (client id, tool, arguments) one after the other, directly through
    the tool functions in one plain transaction, no gateway and no speculation."""
    engine = create_engine(url, poolclass=NullPool)
    results: dict[str, Any] = {}
    outputs = []
    with engine.begin() as conn:
        db = Session(bind=conn, join_transaction_mode="create_savepoint")
        for client_id, tool, arguments in calls:
            ctx = ToolContext(call_id=f"ref-{client_id}", idempotency_key=f"ref-{client_id}",
                              tenant="ref", session_id="ref", turn_id="ref", db=db)
            resolved = placeholders.resolve(arguments, results)
            results[client_id] = ADAPTER.tool(tool).invoke(ctx, resolved)
            outputs.append(results[client_id])
        db.commit()
    engine.dispose()
    return outputs


@contextmanager
def local_gateways(pg_home: Path, ledger_url: str, logs: Path, count: int,
                   **env: str) -> Iterator[list[LocalGateway]]:
    """``count`` real ``specgate serve`` processes on the test ledger, over a reset demo shop;
    ``env``: more settings (``SPECGATE_…``). Stopped afterwards, resumed first if paused."""
    from tests.conftest import make_settings, reset_shop

    reset_shop(ledger_url, make_settings(pg_home, ledger_url))
    shared = {"SPECGATE_HOME": str(pg_home), "SPECGATE_DATABASE_URL": ledger_url,
              "SPECGATE_ADAPTERS": '["demo"]', **env}
    gateways = [LocalGateway(env=shared, log_path=logs / f"gateway-{i}.log")
                for i in range(count)]
    try:
        for gateway in gateways:
            gateway.start()
        yield gateways
    finally:
        for gateway in gateways:
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.process.send_signal(signal.SIGCONT)  # a test may have paused it
            gateway.stop()

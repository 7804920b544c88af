"""SIGTERM drains a gateway: two real ``specgate serve`` processes on one Postgres; the one
stopped keeps serving its open turns for the grace period (through the other gateway, which
forwards), cancels what is left with a clear reason, lets every session go and exits. No
committed work is lost and no session is stranded."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from lab.servers import LocalGateway
from tests.gateway.helpers import local_gateways, new_keys, shop_state

GRACE_S = 3.0


@pytest.fixture
def pair(pg_home: Path, ledger_url: str, tmp_path: Path) -> Iterator[tuple[LocalGateway, ...]]:
    with local_gateways(pg_home, ledger_url, tmp_path, 2,
                        SPECGATE_DRAIN_GRACE_S=str(GRACE_S)) as gateways:
        yield tuple(gateways)


def _owned_by(ledger_url: str, gateway_id: str) -> int:
    engine = create_engine(ledger_url, poolclass=NullPool)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM sessions WHERE owner_id = :g"),
                             {"g": gateway_id}).scalar_one()
    engine.dispose()
    return int(count)


def _order(client: httpx.Client, sid: str, customer: str) -> None:
    answer = client.post(f"/v1/sessions/{sid}/calls", json={
        "tool": "demo.create_order", "client_call_id": 1, "arguments": {"customer": customer}})
    assert answer.json()["status"] == "held", answer.text


def test_sigterm_drains_open_turns_then_lets_every_session_go(
        pair: tuple[LocalGateway, ...], ledger_url: str) -> None:
    stopping, staying = pair
    [key] = new_keys(ledger_url, f"drain-{uuid.uuid4().hex[:6]}", "app")
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stopping.url, headers=auth, timeout=30) as old, \
            httpx.Client(base_url=staying.url, headers=auth, timeout=30) as new:
        gateway_id = old.get("/healthz").json()["gateway"]
        sessions = [old.post("/v1/sessions", json={}).json() for _ in range(3)]
        (finished, tid), (abandoned, _), (idle, _) = [
            (s["id"], s["turns"][0]["id"]) for s in sessions]
        _order(old, finished, "ann")
        _order(old, abandoned, "bo")  # never committed: cancelled when the grace is over
        assert stopping.process is not None
        stopping.process.send_signal(signal.SIGTERM)
        # While it drains, its open turn commits through the other gateway (forwarded to it).
        committed = new.post(f"/v1/sessions/{finished}/turns/{tid}/commit", json={})
        assert committed.status_code == 200, committed.text
        assert stopping.process.wait(timeout=GRACE_S + 20) is not None
        assert _owned_by(ledger_url, gateway_id) == 0  # every session let go
        cut = new.get(f"/v1/sessions/{abandoned}").json()["turns"][0]
        assert cut["status"] == "cancelled" and "drain" in cut["error"]["reason"]
        assert [c["status"] for c in cut["calls"]] == ["cancelled"]
        for sid in (finished, abandoned):  # every session goes on through the other gateway
            assert new.post(f"/v1/sessions/{sid}/turns", json={}).status_code == 201
        assert new.post(f"/v1/sessions/{idle}/calls", json={
            "tool": "demo.list_products", "client_call_id": 1}).json()["status"] == "succeeded"
    assert [o["customer"] for o in shop_state(ledger_url)["demo_orders"]] == ["ann"]

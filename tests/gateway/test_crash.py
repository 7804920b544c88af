"""Crash recovery with a real gateway process killed by SIGKILL (invariants I1–I4, I9).

The gateway runs as ``python -m specgate serve``; fail points (gateway.faults) stop it dead at
an exact step of the commit protocol so the kill lands there. After a restart on the same port
(same gateway id), the reconciler must leave no prepared transaction, no idle transaction and
no undecided call, and the shop must be exactly what the decision says.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from gateway.auth.service import create_key
from gateway.db import make_engine
from lab.servers import LocalGateway, free_port
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import sequential_run, shop_state

LIVE = ("proposed", "running", "held", "succeeded", "staged")


class Gateway:
    """A gateway process that can be killed and restarted on the same port (same id)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.port = env, log, free_port()
        self.server: LocalGateway | None = None

    def start(self, **extra: str) -> str:
        self.server = LocalGateway(env={**self.env, **extra}, port=self.port,
                                   log_path=self.log).start()
        return self.server.url

    def kill(self) -> None:
        assert self.server is not None
        self.server.kill()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def crashable(pg_home: Path, ledger_url: str, tool_url: str, tmp_path: Path,
              topology: str) -> Iterator[Callable[[], Any]]:
    shop_url = ledger_url if topology == "local" else tool_url
    settings = make_settings(pg_home, ledger_url, None if topology == "local" else tool_url)
    reset_shop(shop_url, settings)
    env = {"SPECGATE_HOME": str(pg_home), "SPECGATE_DATABASE_URL": ledger_url,
           "SPECGATE_ADAPTERS": '["demo"]', "SPECGATE_REAPER_PERIOD_S": "0.5",
           "SPECGATE_TOOL_DATABASE_URLS": json.dumps(
               {} if topology == "local" else {"demo": tool_url})}
    gateway = Gateway(env, tmp_path / "gateway.log")
    engine = make_engine(ledger_url, pool_size=1)
    _, key = create_key(engine, f"crash-{uuid.uuid4().hex[:6]}", "app")
    engine.dispose()
    yield lambda: (gateway, key, shop_url)
    gateway.stop()


def _api(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _speculate(client: httpx.Client) -> tuple[str, str]:
    session = client.post("/v1/sessions", json={}).json()
    sid, tid = session["id"], session["turns"][0]["id"]
    for cid, tool, arguments in [
        (1, "create_order", {"customer": "ann"}),
        (2, "add_item", {"order_id": "$1.order_id", "sku": "grinder", "quantity": 2}),
        (3, "place_order", {"order_id": "$1.order_id", "card_last4": "4242"}),
    ]:
        response = client.post(f"/v1/sessions/{sid}/calls", json={
            "tool": f"demo.{tool}", "client_call_id": cid, "arguments": arguments})
        assert response.status_code == 201, response.text
    return sid, tid


KEPT = [
    ("1", "create_order", {"customer": "ann"}),
    ("2", "add_item", {"order_id": "$1.order_id", "sku": "grinder", "quantity": 2}),
    ("3", "place_order", {"order_id": "$1.order_id", "card_last4": "4242"}),
]


def _wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _prepared(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        gids = [r.gid for r in conn.execute(text("SELECT gid FROM pg_prepared_xacts"))]
    engine.dispose()
    return gids


def _idle_in_transaction(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        count = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")).scalar_one()
    engine.dispose()
    return int(count)


def assert_at_rest(ledger_url: str, shop_url: str, sid: str) -> None:
    """I1, I4, I8-adjacent and I9 for one session, once the reconciler has run."""
    assert _prepared(shop_url) == [] and _prepared(ledger_url) == []
    _wait_for(lambda: _idle_in_transaction(shop_url) == 0, "no idle-in-transaction backends")
    engine = create_engine(ledger_url, poolclass=NullPool)
    with engine.connect() as conn:
        live = conn.execute(text("SELECT count(*) FROM calls WHERE session_id = :s AND status "
                                 "= ANY(:live)"), {"s": sid, "live": list(LIVE)}).scalar_one()
        both = conn.execute(text(
            "SELECT call_id FROM call_events WHERE session_id = :s AND call_id IS NOT NULL "
            "GROUP BY call_id HAVING bool_or(to_status = 'committed') "
            "AND bool_or(to_status IN ('cancelled', 'aborted'))"), {"s": sid}).all()
    engine.dispose()
    assert live == 0, "a call is still undecided after recovery"
    assert both == [], "a call was both committed and cancelled"


def _statuses(client: httpx.Client, sid: str) -> tuple[str, list[str]]:
    turn = client.get(f"/v1/sessions/{sid}").json()["turns"][-1]
    return turn["status"], [c["status"] for c in turn["calls"]]


@pytest.mark.parametrize("topology", ["local", "2pc"], indirect=True)
def test_kill_while_a_turn_holds_calls(crashable: Callable[[], Any], ledger_url: str) -> None:
    gateway, key, shop_url = crashable()
    before = shop_state(shop_url)
    with _api(gateway.start(), key) as client:
        sid, _ = _speculate(client)
        assert _statuses(client, sid)[1] == ["held", "held", "staged"]
    gateway.kill()
    with _api(gateway.start(), key) as client:
        status, calls = _statuses(client, sid)
    assert status == "aborted" and calls == ["aborted"] * 3
    assert shop_state(shop_url) == before
    assert_at_rest(ledger_url, shop_url, sid)


def _commit_in_background(client: httpx.Client, sid: str, tid: str) -> threading.Thread:
    def commit() -> None:
        # the gateway is killed mid-request, as intended
        with contextlib.suppress(httpx.TransportError):
            client.post(f"/v1/sessions/{sid}/turns/{tid}/commit", json={})

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("topology", "fault", "decided"), [
    ("2pc", "after_prepare", False),
    ("2pc", "after_decision", True),
    ("local", "after_decision", True),
], indirect=["topology"])
def test_kill_inside_the_commit_protocol(crashable: Callable[[], Any], ledger_url: str,
                                         fault: str, decided: bool, pg_home: Path) -> None:
    gateway, key, shop_url = crashable()
    before = shop_state(shop_url)
    with _api(gateway.start(SPECGATE_FAULTS=fault), key) as client:
        sid, tid = _speculate(client)
        thread = _commit_in_background(client, sid, tid)
        if fault == "after_prepare":
            _wait_for(lambda: len(_prepared(shop_url)) == 1, "the turn to be PREPAREd")
        _wait_for(lambda: "fail point" in gateway.log.read_text(), f"fail point {fault}")
        gateway.kill()
        thread.join(timeout=30)
    with _api(gateway.start(), key) as client:
        status, calls = _statuses(client, sid)
    if decided:
        assert status == "committed" and calls == ["committed"] * 3
        settings = make_settings(pg_home, ledger_url, None if shop_url == ledger_url else
                                 shop_url)
        after = shop_state(shop_url)
        reset_shop(shop_url, settings)
        sequential_run(shop_url, KEPT)
        assert after == shop_state(shop_url)  # applied exactly once
    else:
        assert status == "aborted" and calls == ["aborted"] * 3
        assert shop_state(shop_url) == before
    assert_at_rest(ledger_url, shop_url, sid)

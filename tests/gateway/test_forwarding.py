"""Any gateway answers any request: two real ``specgate serve`` processes on one Postgres, a
session owned by the first, every request of it sent to the second (as a load balancer without
affinity would). The second forwards to the owner; a killed owner is seen dead as soon as
Postgres drops its presence lock (not after its 15 s lease), and its session goes on through the
other gateway, the turn it held aborted."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.sessions.forwarding import HEADER
from lab.servers import LocalGateway
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import (
    ledger_sql,
    local_gateways,
    new_keys,
    sequential_run,
    shop_state,
)

LEASE_S = 15.0  # the default: failover must not wait for it


@pytest.fixture
def pair(pg_home: Path, ledger_url: str, tmp_path: Path) -> Iterator[tuple[LocalGateway, ...]]:
    with local_gateways(pg_home, ledger_url, tmp_path, 2, SPECGATE_REAPER_PERIOD_S="0.5",
                        SPECGATE_OWNER_LEASE_S=str(LEASE_S)) as gateways:
        yield tuple(gateways)


@pytest.fixture
def key(ledger_url: str) -> str:
    [secret] = new_keys(ledger_url, f"fwd-{uuid.uuid4().hex[:6]}", "app")
    return secret


def _client(gateway: LocalGateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=30)


def _owner(ledger_url: str, session_id: str) -> str:
    [(owner,)] = ledger_sql(ledger_url, "SELECT owner_id FROM sessions WHERE id = :s",
                            s=session_id)
    return str(owner)


def _call(client: httpx.Client, sid: str, cid: int, tool: str, **arguments: object
          ) -> httpx.Response:
    return client.post(f"/v1/sessions/{sid}/calls",
                       json={"tool": f"demo.{tool}", "client_call_id": cid,
                             "arguments": arguments})


def test_a_session_is_served_through_any_gateway(pair: tuple[LocalGateway, ...], key: str,
                                                 pg_home: Path, ledger_url: str) -> None:
    first, second = pair
    with _client(first, key) as owner, _client(second, key) as other:
        session = owner.post("/v1/sessions", json={}).json()
        sid, tid = session["id"], session["turns"][0]["id"]
        owner_id = _owner(ledger_url, sid)
        assert _call(other, sid, 1, "create_order", customer="ann").json()["status"] == "held"
        assert _call(other, sid, 2, "add_item", order_id="$1.order_id",
                     sku="espresso").json()["status"] == "held"
        amended = other.post(f"/v1/sessions/{sid}/calls", json={
            "tool": "demo.add_item", "client_call_id": 2, "supersedes": 2,
            "arguments": {"order_id": "$1.order_id", "sku": "grinder"}})
        assert amended.status_code == 201 and amended.json()["status"] == "held"
        assert _call(other, sid, 3, "place_order", order_id="$1.order_id",
                     card_last4="4242").json()["status"] == "staged"
        committed = other.post(f"/v1/sessions/{sid}/turns/{tid}/commit", json={})
        assert committed.status_code == 200, committed.text
        statuses = [c["status"] for c in committed.json()["calls"]]
        assert statuses == ["committed", "cancelled", "committed", "committed"]
        assert _owner(ledger_url, sid) == owner_id  # served by the owner, not taken over
        assert other.get(f"/v1/sessions/{sid}").json()["turns"][0]["status"] == "committed"
    after = shop_state(ledger_url)
    reset_shop(ledger_url, make_settings(pg_home, ledger_url))
    sequential_run(ledger_url, [
        ("1", "create_order", {"customer": "ann"}),
        ("2", "add_item", {"order_id": "$1.order_id", "sku": "grinder"}),
        ("3", "place_order", {"order_id": "$1.order_id", "card_last4": "4242"})])
    assert shop_state(ledger_url) == after


def test_an_idempotency_key_holds_across_the_forward(pair: tuple[LocalGateway, ...],
                                                     key: str) -> None:
    """A retried request with its Idempotency-Key gets the owner's first answer again, through
    either gateway: the refusal that became a forward is not what the key remembers."""
    first, second = pair
    with _client(first, key) as owner, _client(second, key) as other:
        sid = owner.post("/v1/sessions", json={}).json()["id"]
        body = {"tool": "demo.create_order", "client_call_id": 1,
                "arguments": {"customer": "di"}}
        once = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
        answers = [other.post(f"/v1/sessions/{sid}/calls", json=body, headers=once),
                   other.post(f"/v1/sessions/{sid}/calls", json=body, headers=once),
                   owner.post(f"/v1/sessions/{sid}/calls", json=body, headers=once)]
        assert [a.status_code for a in answers] == [201, 201, 201], [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1  # one call, answered three times
        calls = owner.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"]
        assert [c["status"] for c in calls] == ["held"]


def test_a_request_already_forwarded_is_not_forwarded_again(
        pair: tuple[LocalGateway, ...], key: str) -> None:
    first, second = pair
    with _client(first, key) as owner, _client(second, key) as other:
        sid = owner.post("/v1/sessions", json={}).json()["id"]
        looped = other.post(f"/v1/sessions/{sid}/calls", headers={HEADER: "gw-x"}, json={
            "tool": "demo.list_products", "client_call_id": 1, "arguments": {}})
        assert looped.status_code == 503 and looped.headers["retry-after"] == "1"
        assert looped.json()["error"]["code"] == "owner_moved"
        assert owner.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"] == []


def test_a_killed_owner_s_session_goes_on_through_another_gateway_at_once(
        pair: tuple[LocalGateway, ...], key: str, ledger_url: str) -> None:
    first, second = pair
    with _client(first, key) as owner, _client(second, key) as other:
        session = owner.post("/v1/sessions", json={}).json()
        sid, tid = session["id"], session["turns"][0]["id"]
        assert _call(owner, sid, 1, "create_order", customer="bo").json()["status"] == "held"
        # forwarded once: the other gateway now remembers the owner, and must not trust that
        assert _call(other, sid, 2, "list_products").json()["status"] == "succeeded"
        owner_id = _owner(ledger_url, sid)
        first.kill()
        killed_at = time.monotonic()
        refused = 0
        while True:
            answer = other.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", json={})
            if answer.status_code != 503:
                break
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "owner_unreachable"
            refused += 1
            assert time.monotonic() - killed_at < LEASE_S, "taken over only by the lease"
            time.sleep(0.1)
        usable_after = time.monotonic() - killed_at
        print(f"usable through the other gateway {usable_after:.2f} s after the kill "
              f"(lease {LEASE_S} s, {refused} retryable 503s)")
        # Postgres drops a dead gateway's presence lock within a second or so; the bound here
        # leaves room for a loaded machine and still fails if failover waits for the lease.
        assert usable_after < 5.0
        # The takeover recovered the dead owner's turn: aborted, its held effect rolled back.
        assert answer.status_code == 409, answer.text
        turn = other.get(f"/v1/sessions/{sid}").json()["turns"][0]
        assert turn["status"] == "aborted" and turn["calls"][0]["status"] == "aborted"
        assert _owner(ledger_url, sid) != owner_id and shop_state(ledger_url)["demo_orders"] == []
        opened = other.post(f"/v1/sessions/{sid}/turns", json={})
        assert opened.status_code == 201, opened.text
        assert _call(other, sid, 1, "list_products").json()["status"] == "succeeded"


@pytest.fixture
def short_lease_pair(pg_home: Path, ledger_url: str,
                     tmp_path: Path) -> Iterator[tuple[LocalGateway, ...]]:
    with local_gateways(pg_home, ledger_url, tmp_path, 2, SPECGATE_REAPER_PERIOD_S="0.5",
                        SPECGATE_OWNER_LEASE_S="2") as gateways:
        yield tuple(gateways)


def test_a_paused_owner_commits_nothing_once_resumed(
        short_lease_pair: tuple[LocalGateway, ...], ledger_url: str) -> None:
    """SIGSTOP past the lease: the other gateway takes the session over and aborts the turn.
    After SIGCONT the old owner's commit is refused with a JSON 409, nothing of the turn is
    committed, no call is left live in a decided turn, and the audit chain verifies."""
    first, second = short_lease_pair
    tenant = f"pause-{uuid.uuid4().hex[:6]}"
    key, admin = new_keys(ledger_url, tenant, "app", "admin")
    assert first.process is not None
    with _client(first, key) as paused, _client(second, key) as other:
        session = paused.post("/v1/sessions", json={}).json()
        sid, tid = session["id"], session["turns"][0]["id"]
        assert _call(paused, sid, 1, "create_order", customer="cy").json()["status"] == "held"
        first.process.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # past the 2 s lease: its heartbeat is stale, its lock still held
        taken = _call(other, sid, 2, "list_products")
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "turn_not_open"
        first.process.send_signal(signal.SIGCONT)
        refused = paused.post(f"/v1/sessions/{sid}/turns/{tid}/commit", json={})
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/json")
        turn = other.get(f"/v1/sessions/{sid}").json()["turns"][0]
        assert turn["status"] == "aborted"
        assert [c["status"] for c in turn["calls"]] == ["aborted"]
        assert shop_state(ledger_url)["demo_orders"] == []
        verified = other.get("/v1/admin/audit/verify",
                             headers={"Authorization": f"Bearer {admin}"})
        assert verified.status_code == 200, verified.text


def test_a_remembered_owner_that_drains_costs_the_client_nothing(
        pair: tuple[LocalGateway, ...], key: str, ledger_url: str) -> None:
    """The second gateway remembers the first as the session's owner (for
    ``SPECGATE_OWNER_RECHECK_S``). The first is stopped with SIGTERM and lets the idle session
    go: the second's next request for it gets no 503 ``draining`` (nor a refused connection),
    because a remembered owner that did nothing sends the request down the ordinary path, and
    the second takes the session."""
    first, second = pair
    assert first.process is not None
    with _client(first, key) as owner, _client(second, key) as other:
        sid = owner.post("/v1/sessions", json={}).json()["id"]
        assert _call(other, sid, 1, "list_products").json()["status"] == "succeeded"
        first_id = _owner(ledger_url, sid)
        first.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _owner(ledger_url, sid) != "None" and time.monotonic() < deadline:
            time.sleep(0.05)  # the drain lets the session go
        answer = _call(other, sid, 2, "list_products")
        assert answer.status_code == 201, answer.text
        assert _owner(ledger_url, sid) not in ("None", first_id)

"""Three real gateways on one Postgres behind a per-connection round-robin balancer, clients
opening a connection per request: every request of a session lands on any gateway, as behind a
plain load balancer or a Kubernetes Service. Every session must still complete, and the shop
must be what a sequential run of the kept calls gives."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from lab.proxy import RoundRobinProxy
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import local_gateways, new_keys, sequential_run, shop_state

SESSIONS = 20


def _seed_products(url: str) -> None:
    """A product per session: a held add_item locks its product's row until commit, so a
    shared one would measure that queue, not the gateways."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for i in range(SESSIONS):
            conn.execute(text("INSERT INTO demo_products (sku, name, price_cents, stock) "
                              "VALUES (:sku, :name, 500, 100)"),
                         {"sku": f"p{i:02d}", "name": f"product {i}"})
    engine.dispose()


@pytest.fixture
def balancer(pg_home: Path, ledger_url: str, tmp_path: Path) -> Iterator[str]:
    with local_gateways(pg_home, ledger_url, tmp_path, 3) as gateways, \
            RoundRobinProxy([("127.0.0.1", g.port) for g in gateways]) as proxy:
        _seed_products(ledger_url)
        yield f"http://127.0.0.1:{proxy.port}"


def _steps(i: int) -> list[tuple[str, dict[str, Any], int]]:
    """(path suffix, body, expected status) of session i's turn: open (with the session), 3
    reversible calls, an amendment, 1 sensitive, commit."""
    sku, order = f"p{i:02d}", "$1.order_id"
    call = "/calls"
    return [
        (call, {"tool": "demo.create_order", "client_call_id": 1,
                "arguments": {"customer": f"c{i:02d}"}}, 201),
        (call, {"tool": "demo.add_item", "client_call_id": 2,
                "arguments": {"order_id": order, "sku": sku}}, 201),
        (call, {"tool": "demo.add_item", "client_call_id": 3,
                "arguments": {"order_id": order, "sku": sku, "quantity": 2}}, 201),
        (call, {"tool": "demo.add_item", "client_call_id": 3, "supersedes": 3,
                "arguments": {"order_id": order, "sku": sku, "quantity": 3}}, 201),
        (call, {"tool": "demo.place_order", "client_call_id": 4,
                "arguments": {"order_id": order, "card_last4": "4242"}}, 201),
    ]


def _session(base: str, key: str, i: int) -> list[str]:
    """Run session i through the balancer; the statuses of its committed turn's calls."""
    # No keep-alive: a connection per request, so the balancer spreads every request.
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        created = client.post("/v1/sessions", json={})
        assert created.status_code == 201, created.text
        sid, tid = created.json()["id"], created.json()["turns"][0]["id"]
        for suffix, body, expected in _steps(i):
            answer = client.post(f"/v1/sessions/{sid}{suffix}", json=body)
            assert answer.status_code == expected, (i, body, answer.text)
        committed = client.post(f"/v1/sessions/{sid}/turns/{tid}/commit", json={})
        assert committed.status_code == 200, (i, committed.text)
        return [c["status"] for c in committed.json()["calls"]]


def test_twenty_sessions_through_three_gateways_without_affinity(
        balancer: str, pg_home: Path, ledger_url: str) -> None:
    tenant = f"scale-{uuid.uuid4().hex[:6]}"
    [key] = new_keys(ledger_url, tenant, "app")
    with ThreadPoolExecutor(SESSIONS) as pool:
        results = list(pool.map(lambda i: _session(balancer, key, i), range(SESSIONS)))
    assert results == [["committed", "committed", "cancelled", "committed", "committed"]
                       ] * SESSIONS  # the amended add_item cancelled, its successor kept
    raw = create_engine(ledger_url, poolclass=NullPool)
    with raw.connect() as conn:  # sessions were opened on every gateway: most requests of
        owners = conn.execute(text(  # each reached a gateway that did not own it
            "SELECT count(DISTINCT owner_id) FROM sessions WHERE tenant = :t"),
            {"t": tenant}).scalar_one()
    raw.dispose()
    assert owners == 3
    after = shop_state(ledger_url)
    reset_shop(ledger_url, make_settings(pg_home, ledger_url))
    _seed_products(ledger_url)
    for i in range(SESSIONS):
        sku, order = f"p{i:02d}", "$1.order_id"
        sequential_run(ledger_url, [
            ("1", "create_order", {"customer": f"c{i:02d}"}),
            ("2", "add_item", {"order_id": order, "sku": sku}),
            ("3", "add_item", {"order_id": order, "sku": sku, "quantity": 3}),
            ("4", "place_order", {"order_id": order, "card_last4": "4242"})])
    assert shop_state(ledger_url) == after


class _Retrying:
    """A client as a production one behaves behind a balancer: a connection per request, an
    Idempotency-Key on every POST, and the same request again after a 503's Retry-After or a
    dropped connection."""

    def __init__(self, base: str, key: str) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                                   timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
        self.retries = 0

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        answer: httpx.Response | None = None
        for _ in range(100):
            try:
                answer = self.client.post(path, json=body, headers=headers)
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code not in (429, 503):
                return answer
            self.retries += 1
            time.sleep(float(answer.headers.get("retry-after", 1)) / 4 if answer else 0.2)
        raise AssertionError(f"{path}: still refused after 100 tries: "
                             f"{answer.text if answer is not None else 'no connection'}")


def _turns(base: str, key: str, i: int, turns: int) -> tuple[list[str], int]:
    """Session i plays ``turns`` turns (open, held call, sensitive, commit); the committed
    turns' statuses and how many requests were retried."""
    client = _Retrying(base, key)
    sku, order = f"p{i:02d}", "$1.order_id"
    created = client.post("/v1/sessions", {})
    assert created.status_code == 201, created.text
    sid, tid = created.json()["id"], created.json()["turns"][0]["id"]
    statuses = []
    for turn in range(turns):
        if turn:
            opened = client.post(f"/v1/sessions/{sid}/turns", {})
            assert opened.status_code == 201, (i, opened.text)
            tid = opened.json()["id"]
        for body in ({"tool": "demo.create_order", "client_call_id": 1,
                      "arguments": {"customer": f"c{i:02d}t{turn}"}},
                     {"tool": "demo.add_item", "client_call_id": 2,
                      "arguments": {"order_id": order, "sku": sku}},
                     {"tool": "demo.place_order", "client_call_id": 3,
                      "arguments": {"order_id": order, "card_last4": "4242"}}):
            answer = client.post(f"/v1/sessions/{sid}/calls", body)
            assert answer.status_code == 201, (i, turn, answer.text)
            time.sleep(0.05)  # the user keeps talking: turns stay open while the pool changes
        committed = client.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {})
        assert committed.status_code == 200, (i, turn, committed.text)
        statuses.append(committed.json()["status"])
    client.client.close()
    return statuses, client.retries


def test_a_gateway_joins_and_another_drains_under_traffic(
        pg_home: Path, ledger_url: str, tmp_path: Path) -> None:
    [key] = new_keys(ledger_url, f"pool-{uuid.uuid4().hex[:6]}", "app")
    with local_gateways(pg_home, ledger_url, tmp_path, 4,
                        SPECGATE_DRAIN_GRACE_S="5") as gateways:
        _seed_products(ledger_url)
        address = [("127.0.0.1", g.port) for g in gateways]
        with RoundRobinProxy(address[:3]) as proxy, ThreadPoolExecutor(SESSIONS) as pool:
            base = f"http://127.0.0.1:{proxy.port}"
            runs = [pool.submit(_turns, base, key, i, 3) for i in range(SESSIONS)]
            time.sleep(1.0)
            proxy.set_targets(address)  # a 4th gateway joins the pool
            time.sleep(0.5)
            drained = gateways[0]
            assert drained.process is not None
            drained.process.send_signal(signal.SIGTERM)  # a rolling deploy takes one out
            proxy.set_targets(address[1:])
            results = [run.result(timeout=120) for run in runs]
            assert drained.process.wait(timeout=30) is not None
        assert [statuses for statuses, _ in results] == [["committed"] * 3] * SESSIONS
        retried = sum(retries for _, retries in results)
        print(f"{SESSIONS * 3} turns committed through a pool that gained a gateway and "
              f"drained one; {retried} requests retried after a 503 or a dropped connection")
        raw = create_engine(ledger_url, poolclass=NullPool)
        with raw.connect() as conn:  # no session stranded on the drained gateway
            stranded = conn.execute(text(
                "SELECT count(*) FROM sessions s JOIN gateways g ON g.id = s.owner_id "
                "WHERE g.id = :g"), {"g": f"{socket.gethostname()}:{drained.port}"}).scalar_one()
        raw.dispose()
        assert stranded == 0

"""TTL reaper, the bound on held transactions, ops endpoints, events, and migrations."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from gateway.auth.service import create_key
from gateway.db import make_engine
from gateway.migrate import downgrade_ledger, upgrade_ledger
from gateway.turns import recovery
from lab.servers import free_port
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import Api, new_keys, shop_state


def _gateway(gateway_factory: Any, pg_home: Path, ledger_url: str, **overrides: Any) -> Api:
    settings = make_settings(pg_home, ledger_url, **overrides)
    reset_shop(ledger_url, settings)
    client = gateway_factory(settings)
    engine = make_engine(ledger_url, pool_size=1)
    _, key = create_key(engine, f"t-{uuid.uuid4().hex[:6]}", "app")
    engine.dispose()
    return Api(client, key)


def test_reaper_expires_turns_past_their_ttl(gateway_factory: Any, pg_home: Path,
                                             ledger_url: str) -> None:
    api = _gateway(gateway_factory, pg_home, ledger_url, turn_ttl_s=0.5)
    before = shop_state(ledger_url)
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "kettle"})
    rt = api.client.app.state.runtime
    assert rt.holds.held_connections == 1
    time.sleep(0.6)
    # The reconcile is global: it may also expire another test's stale turn, so the count is a
    # lower bound and the assertions that matter are on this test's own turn below.
    assert recovery.reconcile(rt)["expired_turns"] >= 1
    turn = api.get(f"/v1/sessions/{sid}").json()["turns"][0]
    assert turn["status"] == "expired"
    assert [c["status"] for c in turn["calls"]] == ["expired", "expired"]
    assert rt.holds.held_connections == 0
    assert shop_state(ledger_url) == before
    assert api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}).status_code == 409


def test_an_abandoned_turn_is_cancelled_after_its_idle_time(gateway_factory: Any, pg_home: Path,
                                                            ledger_url: str) -> None:
    api = _gateway(gateway_factory, pg_home, ledger_url, turn_idle_s=3.0)
    before = shop_state(ledger_url)
    sid, tid = api.session()
    kept_sid, kept_tid = api.session()
    api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    api.call(kept_sid, 1, "create_order", arguments={"customer": "bo"})
    rt = api.client.app.state.runtime
    assert rt.holds.held_connections == 2
    time.sleep(1.6)
    api.call(kept_sid, 2, "list_products")  # a request: that turn is not abandoned
    time.sleep(1.6)  # the other turn: 3.2 s and more without a request, past its 3 s
    assert recovery.reconcile(rt)["idle_turns"] >= 1  # global: counts other tests' turns too
    turn = api.get(f"/v1/sessions/{sid}").json()["turns"][0]
    assert turn["status"] == "cancelled" and "SPECGATE_TURN_IDLE_S" in turn["error"]["reason"]
    assert [c["status"] for c in turn["calls"]] == ["cancelled"]
    assert rt.holds.held_connections == 1
    assert api.get(f"/v1/sessions/{kept_sid}").json()["turns"][0]["status"] == "open"
    api.commit(kept_sid, kept_tid)
    assert [o["customer"] for o in shop_state(ledger_url)["demo_orders"]] == ["bo"]
    assert len(before["demo_orders"]) == 0
    assert api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}).status_code == 409


def test_reaper_expires_staged_calls_and_their_dependents(gateway_factory: Any, pg_home: Path,
                                                          ledger_url: str) -> None:
    api = _gateway(gateway_factory, pg_home, ledger_url, staged_ttl_s=0.3)
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "filter"})
    api.call(sid, 3, "place_order", arguments={"order_id": "$1.order_id", "card_last4": "4242"})
    api.call(sid, 4, "get_order", arguments={"order_id": "$3.order_id"})  # deferred: staged
    time.sleep(0.4)
    assert recovery.reconcile(api.client.app.state.runtime)["expired_calls"] >= 2  # global
    turn = api.commit(sid, tid)
    assert [c["status"] for c in turn["calls"]] == ["committed", "committed", "expired",
                                                    "expired"]
    assert shop_state(ledger_url)["demo_payments"] == []


def test_held_transactions_are_bounded_with_a_clear_429(gateway_factory: Any, pg_home: Path,
                                                        ledger_url: str) -> None:
    api = _gateway(gateway_factory, pg_home, ledger_url, max_held_transactions=2)
    sessions = [api.session() for _ in range(3)]
    for sid, _ in sessions[:2]:
        api.call(sid, 1, "create_order", arguments={"customer": sid})
    sid, _ = sessions[2]
    response = api.post(f"/v1/sessions/{sid}/calls", {
        "tool": "demo.create_order", "client_call_id": 1, "arguments": {"customer": "c"}})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "held_transactions_exhausted" and error["details"]["bound"] == 2
    assert api.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"] == []
    assert api.call(sid, 1, "list_products")["status"] == "succeeded"  # reads still work
    first_sid, first_tid = sessions[0]
    api.commit(first_sid, first_tid)
    assert api.call(sid, 2, "create_order", arguments={"customer": "c"})["status"] == "held"


def test_healthz_metrics_and_openapi(gateway_factory: Any, pg_home: Path,
                                     ledger_url: str) -> None:
    api = _gateway(gateway_factory, pg_home, ledger_url)
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    api.call(sid, 2, "list_products")
    health = api.client.get("/healthz").json()
    assert health["ok"] is True and health["held"] == 1
    api.commit(sid, tid)
    metrics = api.client.get("/metrics").text
    assert 'specgate_calls_total{effect="reversible",status="committed"}' in metrics
    assert 'specgate_speculation_total{outcome="kept"}' in metrics
    assert "specgate_turn_commit_seconds_count" in metrics
    assert "specgate_held_transactions 0.0" in metrics
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "/v1/sessions/{session_id}/turns/{turn_id}/commit" in paths


def test_event_stream_carries_every_transition_in_order(gateway_factory: Any, pg_home: Path,
                                                        ledger_url: str) -> None:
    from gateway.events import service as events_service

    api = _gateway(gateway_factory, pg_home, ledger_url)
    sid, tid = api.session()
    first = api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    api.cancel(first["id"])
    api.commit(sid, tid)
    rt = api.client.app.state.runtime
    events = events_service.fetch(rt, sid, 0)
    moves = [(e["entity"], e["from"], e["to"]) for e in events]
    assert moves == [("turn", None, "open"), ("call", None, "proposed"),
                     ("call", "proposed", "running"), ("call", "running", "held"),
                     ("call", "held", "cancelled"), ("turn", "open", "committing"),
                     ("turn", "committing", "committed")]
    resumed = events_service.fetch(rt, sid, events[3]["id"])
    assert [e["to"] for e in resumed] == ["cancelled", "committing", "committed"]
    with api.client.stream("GET", f"/v1/sessions/{sid}/events", headers={
            **api.headers, "Last-Event-ID": str(events[-2]["id"])}) as stream:
        line = next(line for line in stream.iter_lines() if line.startswith("data:"))
    assert orjson.loads(line[5:])["to"] == "committed"


def test_migrations_upgrade_and_downgrade(pg_home: Path, ledger_url: str) -> None:
    from gateway.embedded import embedded_database_url

    url = embedded_database_url(pg_home, f"sg_mig_{uuid.uuid4().hex[:6]}")
    upgrade_ledger(url)
    engine = create_engine(url, poolclass=NullPool)
    tables = set(inspect(engine).get_table_names())
    assert {"sessions", "turns", "calls", "call_events", "api_keys", "idempotency_records",
            "commit_markers", "outbox", "gateways", "transcript_chunks",
            "worker_heartbeats"} <= tables
    downgrade_ledger(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_ledger(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0006"
    outbox = {c["name"] for c in inspect(engine).get_columns("outbox")}
    assert {"next_at", "sends", "done_at"} <= outbox
    assert "url" in {c["name"] for c in inspect(engine).get_columns("gateways")}
    engine.dispose()


@pytest.mark.parametrize("status", ["nope"])
def test_listing_rejects_unknown_status(gateway_factory: Any, pg_home: Path, ledger_url: str,
                                        status: str) -> None:
    api = _gateway(gateway_factory, pg_home, ledger_url)
    assert api.get(f"/v1/calls?status={status}", expect=400).json()["error"]["code"]


def test_a_database_that_cannot_be_reached_gives_a_retryable_503(
        gateway_factory: Any, pg_home: Path) -> None:
    """Nothing listens on the ledger's port: every route, the hot route's fast path and the
    health check answer 503 ``database_unavailable`` in the JSON envelope with Retry-After."""
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    client = gateway_factory(make_settings(pg_home, dead))
    key = {"Authorization": "Bearer sgk_" + "x" * 40}
    answers = [
        client.post("/v1/sessions", json={}, headers=key),
        client.post("/v1/sessions/ses_1/calls", headers=key,
                    json={"tool": "demo.list_products", "client_call_id": 1, "arguments": {}}),
        client.get("/healthz"),
    ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "database_unavailable"


def test_a_database_out_of_connections_gives_retryable_503s_never_a_500(
        pg_home: Path, ledger_url: str) -> None:
    """Held turns use up what Postgres allows (here a role capped at 4 connections, as a full
    ``max_connections`` would; one is the gateway's listener of key revocations): every
    request is answered 201 or 503 in the JSON envelope with Retry-After, none 500, and the
    gateway goes on once connections are free again."""
    from fastapi.testclient import TestClient
    from sqlalchemy.engine import make_url

    from gateway.app import create_app

    role = f"sg_capped_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ledger_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 4')
        conn.exec_driver_sql(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        conn.exec_driver_sql(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    capped = make_url(ledger_url).set(username=role).render_as_string(hide_password=False)
    settings = make_settings(pg_home, capped)
    reset_shop(ledger_url, make_settings(pg_home, ledger_url))
    [key] = new_keys(ledger_url, f"t-{uuid.uuid4().hex[:6]}", "app")
    try:
        with TestClient(create_app(settings, background=False)) as client:
            api = Api(client, key)
            answers = []
            for i in range(6):  # each open turn with a held call keeps a connection
                created = api.post("/v1/sessions", {})
                answers.append(created)
                if created.status_code == 201:
                    answers.append(api.post(f"/v1/sessions/{created.json()['id']}/calls", {
                        "tool": "demo.create_order", "client_call_id": 1,
                        "arguments": {"customer": f"c{i}"}}))
            codes = [a.status_code for a in answers]
            assert set(codes) <= {201, 503} and 503 in codes, codes
            for refused in (a for a in answers if a.status_code == 503):
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] in ("database_unavailable", "capacity")
            for created in (a.json() for a in answers if "turns" in a.json()):
                sid, tid = created["id"], created["turns"][0]["id"]
                assert api.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}).status_code == 200
            assert api.post("/v1/sessions", {}).status_code == 201  # connections free again
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()

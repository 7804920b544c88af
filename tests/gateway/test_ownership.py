"""A session is owned by one gateway (lease): others refuse it with 409 naming the owner, and
take it over, recovering its held turn, once the owner's heartbeat is gone."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from gateway.ledger.audit import verify_chain
from gateway.transactions.holder import holder_name
from gateway.turns import recovery
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import Api, ledger_sql, new_keys, shop_state


def _two_gateways(gateway_factory: Any, pg_home: Path, ledger_url: str,
                  **overrides: float) -> tuple[Any, Any, str]:
    """Two in-process gateways on one ledger, both heartbeating, over a reset shop, and an app
    key of a new tenant."""
    settings = make_settings(pg_home, ledger_url, **overrides)
    reset_shop(ledger_url, settings)
    [key] = new_keys(ledger_url, f"t-{uuid.uuid4().hex[:6]}", "app")
    first, second = gateway_factory(settings), gateway_factory(settings)
    for client in (first, second):
        client.app.state.runtime.heartbeat()
    return first, second, key


def _stop_heartbeat(ledger_url: str, gateway_id: str) -> None:
    """As if the gateway had stopped (died or paused) an hour ago: its lease has lapsed."""
    ledger_sql(ledger_url, "UPDATE gateways SET heartbeat_at = now() - interval '1 hour' "
               "WHERE id = :id", id=gateway_id)


def _holders(url: str, turn_id: str) -> int:
    """The backends holding the turn's transaction (a new connection: pg_stat_activity is a
    snapshot taken once per transaction)."""
    [(count,)] = ledger_sql(url, "SELECT count(*) FROM pg_stat_activity "
                                 "WHERE application_name = :name", name=holder_name(turn_id))
    return int(count)


def test_second_gateway_refuses_then_takes_over_a_dead_owners_session(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    first, second, key = _two_gateways(gateway_factory, pg_home, ledger_url, owner_lease_s=30)
    owner, other = Api(first, key), Api(second, key)
    before = shop_state(ledger_url)
    sid, _ = owner.session()
    owner.call(sid, 1, "create_order", arguments={"customer": "ann"})

    refused = other.post(f"/v1/sessions/{sid}/calls", {"tool": "demo.list_products",
                                                       "client_call_id": 2})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "session_owned_elsewhere"
    assert error["details"]["owner"] == first.app.state.runtime.gateway_id

    # The owner dies: its connection goes (Postgres rolls back) and its heartbeat stops.
    first_rt = first.app.state.runtime
    first_rt.close()
    _stop_heartbeat(ledger_url, first_rt.gateway_id)

    taken = other.call(sid, 1, "list_products", expect=409)  # turn was aborted on takeover
    assert taken["error"]["code"] == "turn_not_open"
    turn = other.get(f"/v1/sessions/{sid}").json()["turns"][0]
    assert turn["status"] == "aborted" and turn["calls"][0]["status"] == "aborted"
    assert shop_state(ledger_url) == before
    recovery.reconcile(second.app.state.runtime)
    assert other.get(f"/v1/sessions/{sid}").json()["turns"][0] == turn  # nothing left to do
    next_turn = other.post(f"/v1/sessions/{sid}/turns", {}, expect=201).json()
    assert next_turn["seq"] == 2


def _paused_owner(gateway_factory: Any, pg_home: Path, ledger_url: str
                  ) -> tuple[Api, Api, Any, tuple[str, str], dict[str, Any]]:
    """An owner holding a turn with a reversible call, then paused past its lease: the old
    owner's and the other gateway's APIs, the old owner's runtime, the session and turn, and
    the shop before. (Its ownership re-check is set far off: resumed, it still believes it owns
    the session.)"""
    first, second, key = _two_gateways(gateway_factory, pg_home, ledger_url, owner_lease_s=30,
                                       owner_recheck_s=600)
    stale, other = Api(first, key), Api(second, key)
    before = shop_state(ledger_url)
    sid, tid = stale.session()
    stale.call(sid, 1, "create_order", arguments={"customer": "ann"})
    first_rt = first.app.state.runtime
    _stop_heartbeat(ledger_url, first_rt.gateway_id)  # the pause: its lease lapses
    return stale, other, first_rt, (sid, tid), before


def test_a_gateway_that_lost_its_session_commits_nothing_and_lets_go(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    """The owner was paused past its lease: another gateway took the session over and aborted
    the turn. The old owner, resumed, still holds the turn's transaction in memory; its commit
    is refused (409 ``stale_state``, JSON), nothing of the turn is committed, and its held
    connection is released."""
    stale, other, first_rt, (sid, tid), before = _paused_owner(gateway_factory, pg_home,
                                                               ledger_url)
    other.call(sid, 2, "list_products", expect=409)  # the takeover aborts the turn
    assert other.get(f"/v1/sessions/{sid}").json()["turns"][0]["status"] == "aborted"

    refused = stale.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "stale_state"
    assert first_rt.holds.held_connections == 0
    turn = other.get(f"/v1/sessions/{sid}").json()["turns"][0]
    assert turn["status"] == "aborted" and turn["calls"][0]["status"] == "aborted"
    assert shop_state(ledger_url) == before


def test_a_write_under_a_lost_epoch_is_refused_and_the_old_owner_lets_go(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    """The split brain of a paused owner. The gateway taking the session over aborts the turn
    and ends the transaction the old owner still holds (its row locks go at once). Resumed, the
    old owner still believes it owns the session and its turn is open, so it runs a new call in
    the turn: the ledger write carries its old epoch and is refused in the same statement
    (``ownership_lost``): no call enters the decided turn, and the old owner lets go of its held
    connection. The request, which recorded nothing, is then asked once more, and answered as
    the session now is: owned by the other gateway (409 JSON; forwarded when it advertises an
    address)."""
    stale, other, first_rt, (sid, tid), before = _paused_owner(gateway_factory, pg_home,
                                                               ledger_url)
    assert _holders(ledger_url, tid) == 1
    other.call(sid, 2, "list_products", expect=409)  # the takeover aborts the turn
    time.sleep(0.2)  # and ends the transaction the old owner held: its row locks are free
    assert _holders(ledger_url, tid) == 0

    refused = stale.post(f"/v1/sessions/{sid}/calls", {
        "tool": "demo.list_products", "client_call_id": 3})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "session_owned_elsewhere"
    assert first_rt.holds.held_connections == 0
    [turn] = other.get(f"/v1/sessions/{sid}").json()["turns"]
    assert turn["status"] == "aborted"
    assert [c["status"] for c in turn["calls"]] == ["aborted"]
    assert shop_state(ledger_url) == before
    again = stale.post(f"/v1/sessions/{sid}/turns", {})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "session_owned_elsewhere"
    [(tenant,)] = ledger_sql(ledger_url, "SELECT tenant FROM sessions WHERE id = :s", s=sid)
    engine = create_engine(ledger_url, poolclass=NullPool)
    with engine.connect() as conn:
        assert verify_chain(conn, tenant) > 0
    engine.dispose()


def test_a_gateway_checks_its_ownership_again_and_stops_serving_a_lost_session(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    """Past ``owner_recheck_s`` a gateway claims its session again: one taken over meanwhile
    is refused (here 409 naming the new owner; a served gateway forwards to it), and the old
    owner opens no turn of it."""
    first, second, key = _two_gateways(gateway_factory, pg_home, ledger_url, owner_lease_s=30,
                                       owner_recheck_s=0.2)
    old, new = Api(first, key), Api(second, key)
    sid, tid = old.session()
    old.call(sid, 1, "list_products")
    _stop_heartbeat(ledger_url, first.app.state.runtime.gateway_id)
    new.commit(sid, tid)  # the takeover: the session is the second gateway's now
    time.sleep(0.3)  # past the first gateway's re-check
    refused = old.post(f"/v1/sessions/{sid}/turns", {})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "session_owned_elsewhere"
    assert error["details"]["owner"] == second.app.state.runtime.gateway_id
    assert [t["status"] for t in new.get(f"/v1/sessions/{sid}").json()["turns"]] == ["committed"]


def test_an_idle_session_is_let_go_so_any_gateway_takes_it(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    first, second, key = _two_gateways(gateway_factory, pg_home, ledger_url, session_idle_s=0.5)
    owner, other = Api(first, key), Api(second, key)
    idle, _ = owner.session()
    owner.call(idle, 1, "list_products")
    busy, busy_turn = owner.session()
    owner.call(busy, 1, "create_order", arguments={"customer": "ann"})  # holds a transaction
    time.sleep(1.2)  # past 0.5 s and the 1 s ownership re-check
    recovery.reconcile(first.app.state.runtime)
    assert other.call(idle, 2, "list_products")["status"] == "succeeded"  # taken, no 409
    refused = other.post(f"/v1/sessions/{busy}/calls", {"tool": "demo.list_products",
                                                       "client_call_id": 2})
    assert refused.status_code == 409  # its held turn keeps it with its gateway
    assert refused.json()["error"]["code"] == "session_owned_elsewhere"
    owner.commit(busy, busy_turn)


def test_a_draining_gateway_leaves_the_sessions_it_does_not_own_to_the_others(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    """A draining gateway takes no session, also not in its reaper: a session nobody owns whose
    turn is past its TTL is left for a gateway that stays, and the pass goes on (its claim
    answers 503 ``draining``, which must not end the pass)."""
    first, second, key = _two_gateways(gateway_factory, pg_home, ledger_url)
    owner = Api(first, key)
    sid, tid = owner.session()
    owner.call(sid, 1, "list_products")
    first_rt, second_rt = first.app.state.runtime, second.app.state.runtime
    assert first_rt.disown(sid)
    ledger_sql(ledger_url, "UPDATE turns SET expires_at = now() - interval '1 second' "
               "WHERE id = :t", t=tid)
    second_rt.draining = True
    counts = recovery.reconcile(second_rt)
    assert counts["expired_turns"] == 0
    [row] = ledger_sql(ledger_url, "SELECT s.owner_id, t.status FROM sessions s JOIN turns t "
                       "ON t.session_id = s.id WHERE t.id = :t", t=tid)
    assert (row.owner_id, row.status) == (None, "open")
    second_rt.draining = False
    assert recovery.reconcile(second_rt)["expired_turns"] >= 1  # a gateway that stays
    assert ledger_sql(ledger_url, "SELECT status FROM turns WHERE id = :t", t=tid) == [
        ("expired",)]

"""Recovery: the reconciler and the TTL reaper (docs/architecture.md#recovery; invariants I1–I4
and I9 of docs/architecture.md#invariants).

Run at start-up and then every ``reaper_period_s`` by each gateway, under a Postgres advisory
lock so two gateways never resolve the same thing at once:

1. Prepared transactions of ours (``pg_prepared_xacts``, GID prefix) are resolved from the
   ledger's decision: ``commit`` → COMMIT PREPARED, ``abort`` → ROLLBACK PREPARED. One without
   a decision whose turn is not being committed by a live gateway gets an ``abort`` decision
   first (the marker's primary key makes the first decision final) and is rolled back.
2. Turns left ``committing``/``cancelling`` by a dead gateway are finished from the marker.
3. Open turns whose held transaction died with its gateway are aborted (Postgres already
   rolled the effects back; the ledger now says so).
4. Turns and staged calls past their TTL are expired, and turns this gateway holds whose
   session has had no request for ``turn_idle_s`` are cancelled (an abandoned voice turn
   must not hold a backend and its row locks for minutes). Sessions this gateway owns that had
   no request for ``session_idle_s`` and hold nothing here are let go, so ownership moves to
   where the traffic is.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from gateway.calls import approvals
from gateway.calls import service as calls_service
from gateway.errors import OwnedElsewhere, Unavailable
from gateway.ledger.rows import TurnScope, load_scope
from gateway.ledger.states import CallStatus, TurnStatus
from gateway.ledger.transitions import fenced, now
from gateway.presence import ALIVE
from gateway.runtime import Runtime
from gateway.transactions.decision import (
    ABORT,
    APPROVAL,
    COMMIT,
    read_decision,
    turn_of_gid,
    write_decision,
)
from gateway.transactions.holder import end_holders
from gateway.transactions.twophase import end_prepared, prepared_gids
from gateway.turns import commit
from gateway.turns import service as turns_service

log = logging.getLogger("specgate.recovery")
S, T = CallStatus, TurnStatus
LOCK_KEY = 0x5E6A7E  # advisory lock id of the reconciler
PREPARED_GRACE_S = 30.0


def _dead_owner_clause() -> str:
    return ("(s.owner_id IS NULL OR NOT EXISTS (SELECT 1 FROM gateways g WHERE g.id = s.owner_id "
            f"AND {ALIVE}))")


def reconcile(rt: Runtime, *, startup: bool = False) -> dict[str, int]:
    """One pass; returns counts of what it resolved (for logs, metrics and tests)."""
    counts = {"committed_prepared": 0, "rolled_back_prepared": 0, "finished": 0,
              "aborted": 0, "expired_turns": 0, "expired_calls": 0,
              "denied_approvals": 0, "idle_turns": 0, "released_sessions": 0}
    with rt.dbs.ledger.connect() as lock_conn:
        if not lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
            return counts
        try:
            _resolve_prepared(rt, counts)
            for turn_id, tenant, session_id in _orphan_turns(rt, startup):
                _recover_turn(rt, tenant, session_id, turn_id, counts)
            _reap(rt, counts)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            lock_conn.commit()
    if any(counts.values()):
        log.info("reconciler: %s", counts)
    return counts


def _resolve_prepared(rt: Runtime, counts: dict[str, int]) -> None:
    for url in rt.dbs.all_urls():
        # The process's own pools, in autocommit: COMMIT/ROLLBACK PREPARED run outside a
        # transaction, and a pass every few seconds must not open fresh connections.
        with rt.dbs.engine_for(url).connect() as pooled:
            conn = pooled.execution_options(isolation_level="AUTOCOMMIT")
            for gid, prepared_at in prepared_gids(conn, rt.settings.gid_prefix):
                decision = _decide_prepared(rt, gid, prepared_at)
                if decision in (COMMIT, ABORT):
                    end_prepared(conn, gid, commit=decision == COMMIT)
                    counts["committed_prepared" if decision == COMMIT
                           else "rolled_back_prepared"] += 1


def _decide_prepared(rt: Runtime, gid: str, prepared_at: Any) -> str | None:
    turn_id = turn_of_gid(gid)
    if turn_id is None:
        return None  # our prefix, not our format: leave it to a person
    with rt.dbs.ledger.begin() as conn:
        marker = read_decision(conn, turn_id)
        if marker is not None:
            return str(marker["decision"])
        in_flight = rt.holds.get(turn_id) is not None
        young = now() - prepared_at < timedelta(seconds=PREPARED_GRACE_S)
        if in_flight or (young and _owner_alive(conn, rt, turn_id)):
            return None  # a live gateway is between PREPARE and its decision
        write_decision(conn, turn_id, ABORT, {}, gid, if_absent=True)
        marker = read_decision(conn, turn_id)
        return None if marker is None else str(marker["decision"])


def _owner_alive(conn: Connection, rt: Runtime, turn_id: str | None) -> bool:
    """Whether another live gateway owns the turn (this one's own turns are known in memory)."""
    row = conn.execute(text(
        "SELECT 1 FROM turns t JOIN sessions s ON s.id = t.session_id "
        f"WHERE t.id = :tid AND s.owner_id <> :me AND NOT {_dead_owner_clause()}"),
        {"tid": turn_id, "me": rt.gateway_id, "lease": rt.settings.owner_lease_s}).first()
    return row is not None


def _orphan_turns(rt: Runtime, startup: bool) -> list[tuple[str, str, str]]:
    """Undecided turns whose gateway is gone (or is this one, before it held anything)."""
    mine = "s.owner_id = :me" if startup else "FALSE"
    query = text(
        "SELECT t.id, t.tenant, t.session_id FROM turns t JOIN sessions s ON s.id = t.session_id "
        "WHERE (t.status IN ('committing', 'cancelling') OR (t.status = 'open' AND EXISTS ("
        "  SELECT 1 FROM calls c WHERE c.turn_id = t.id AND c.status IN ('held', 'running')))) "
        f"AND ({mine} OR {_dead_owner_clause()})"
    )
    with rt.dbs.ledger.connect() as conn:
        rows = conn.execute(query, {"me": rt.gateway_id, "lease": rt.settings.owner_lease_s})
        return [(r.id, r.tenant, r.session_id) for r in rows]


def _recover_turn(rt: Runtime, tenant: str, session_id: str, turn_id: str,
                  counts: dict[str, int]) -> None:
    epoch = owned_epoch(rt, session_id, tenant)
    if epoch is None:
        return
    with rt.session_lock(session_id), fenced(session_id, epoch):
        if rt.holds.get(turn_id) is None:  # else this process holds it: not an orphan
            _resolve_orphan(rt, turns_service.reload(rt, tenant, session_id, turn_id), counts)


def owned_epoch(rt: Runtime, session_id: str, tenant: str) -> int | None:
    """The epoch this gateway owns the session under now, taking it if it may; None when a
    live gateway took it over meanwhile, or while this one drains (it takes no session then)."""
    try:
        return rt.claim(session_id, tenant).epoch
    except (OwnedElsewhere, Unavailable):
        return None


def recover_session(rt: Runtime, tenant: str, session_id: str) -> None:
    """Called by a gateway that just took a session over from a dead one (under its lock)."""
    with rt.dbs.ledger.connect() as conn:
        scope = load_scope(conn, tenant, session_id)
    if rt.holds.get(scope.turn.id) is None:
        _resolve_orphan(rt, scope, {"finished": 0, "aborted": 0})


def _resolve_orphan(rt: Runtime, scope: TurnScope, counts: dict[str, int]) -> None:
    rt.forget_scope(scope.turn.session_id)
    turn = scope.turn
    with rt.dbs.ledger.connect() as conn:
        marker = read_decision(conn, turn.id)
    if turn.status == T.COMMITTING and marker and marker["decision"] in (COMMIT, APPROVAL):
        commit.finalize(rt, scope, marker["outcomes"])
        counts["finished"] += 1
    elif turn.status == T.CANCELLING:
        _end_holders(rt, turn.id)
        turns_service.end_turn(rt, scope, None, T.CANCELLED, S.CANCELLED,
                               "cancel finished at recovery")
        counts["finished"] += 1
    elif turn.status == T.COMMITTING or (
        turn.status == T.OPEN and any(c.status in (S.HELD, S.RUNNING) for c in scope.calls)
    ):
        _end_holders(rt, turn.id)
        turns_service.abort_turn(rt, scope, "the gateway holding this turn stopped")
        counts["aborted"] += 1


def _end_holders(rt: Runtime, turn_id: str) -> None:
    """End what a gateway that lost the turn's session (paused, cut off) may still hold of
    it, so its row locks go now. A dead gateway's backends are gone already."""
    for url in rt.dbs.all_urls():
        try:
            with rt.dbs.autocommit(url) as conn, conn.begin():  # autocommit: sends no BEGIN
                if ended := end_holders(conn, turn_id):
                    log.warning("ended %d held transaction(s) of turn %r left by the gateway "
                                "that lost its session", ended, turn_id)
        except DBAPIError:
            log.exception("could not end the held transactions of turn %r; Postgres ends "
                          "them at their idle timeout", turn_id)


def _cancel_idle(rt: Runtime, counts: dict[str, int]) -> None:
    idle_s = rt.settings.turn_idle_s
    for turn_id in rt.holds.idle(idle_s):
        with rt.dbs.ledger.connect() as conn:
            row = conn.execute(text("SELECT tenant, session_id FROM turns WHERE id = :t"),
                               {"t": turn_id}).first()
        if row is None:
            continue
        epoch = owned_epoch(rt, row.session_id, row.tenant)
        with rt.session_lock(row.session_id):
            hold = rt.holds.get(turn_id)
            if hold is None or not hold.idle_for(idle_s):  # used or ended meanwhile
                continue
            if epoch is None:  # the session passed to another gateway: the turn is its now
                rt.holds.release(turn_id)
                continue
            rt.forget_scope(row.session_id)
            scope = turns_service.reload(rt, row.tenant, row.session_id, turn_id)
            with fenced(row.session_id, epoch):
                if turns_service.end_held(
                        rt, scope, f"no request for {idle_s:g} s (SPECGATE_TURN_IDLE_S): the "
                        "turn was abandoned; its held effects were rolled back"):
                    counts["idle_turns"] += 1


_IDLE_SESSIONS = text(
    "SELECT s.id, (SELECT t.id FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC "
    "LIMIT 1) AS turn_id FROM sessions s WHERE s.owner_id = :me "
    "AND s.owner_seen_at < now() - make_interval(secs => :idle)")


def _release_idle_sessions(rt: Runtime, counts: dict[str, int]) -> None:
    """``owner_seen_at`` moves with every claim (at least every ``owner_recheck_s`` while the
    session has requests), so an old one means no request for that long."""
    with rt.dbs.ledger.connect() as conn:
        rows = list(conn.execute(_IDLE_SESSIONS, {"me": rt.gateway_id,
                                                  "idle": rt.settings.session_idle_s}))
    for row in rows:
        with rt.session_lock(row.id):
            if row.turn_id is not None and rt.holds.get(row.turn_id) is not None:
                continue  # its turn holds a transaction here: the idle-turn rule comes first
            if rt.disown(row.id, unused_for_s=rt.settings.session_idle_s):
                counts["released_sessions"] += 1


def _reap(rt: Runtime, counts: dict[str, int]) -> None:
    counts["denied_approvals"] = approvals.deny_expired(rt)
    _cancel_idle(rt, counts)
    _release_idle_sessions(rt, counts)
    query = text(
        "SELECT t.id, t.tenant, t.session_id, t.expires_at < now() AS turn_expired "
        "FROM turns t JOIN sessions s ON s.id = t.session_id WHERE t.status = 'open' AND ("
        "t.expires_at < now() OR EXISTS (SELECT 1 FROM calls c WHERE c.turn_id = t.id AND "
        "c.status = 'staged' AND c.expires_at < now())) "
        f"AND (s.owner_id = :me OR {_dead_owner_clause()})"
    )
    with rt.dbs.ledger.connect() as conn:
        rows = list(conn.execute(query, {"me": rt.gateway_id, "lease": rt.settings.owner_lease_s}))
    for row in rows:
        epoch = owned_epoch(rt, row.session_id, row.tenant)
        if epoch is None:
            continue
        with rt.session_lock(row.session_id), fenced(row.session_id, epoch):
            rt.forget_scope(row.session_id)
            scope = turns_service.reload(rt, row.tenant, row.session_id, row.id)
            if scope.turn.status != T.OPEN:
                continue
            if row.turn_expired:
                turns_service.expire_turn(rt, scope)
                counts["expired_turns"] += 1
                continue
            stale = [c for c in scope.calls if c.status == S.STAGED and c.expires_at
                     and c.expires_at < now()]
            calls_service.cancel_calls(rt, scope, stale, reason="staged TTL passed",
                                       target=S.EXPIRED)
            counts["expired_calls"] += len(stale)

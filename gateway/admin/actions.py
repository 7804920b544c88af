"""Operator actions that the call and turn routes do not already offer: retry a failed
compensation and extend a TTL. Approve, deny, cancel and (force-)commit are the ordinary
routes called with an admin key, so every action goes through one API and one audit trail.

Each action writes through ``gateway.ledger.transitions``: a status change with
``transition_call``; a TTL extension, which changes no status, as a same-status move
(``open → open``, ``staged → staged``, ``awaiting_approval → awaiting_approval``) whose
compare-and-set and audit event are written by the ledger's own statement, with
``{"action": "extend_ttl", …}`` in the event's detail.

An extension moves the expiry at most one configured TTL past now (``turn_ttl_s``,
``staged_ttl_s``, ``approval_ttl_s``): a held turn's connection is closed by Postgres after
``turn_ttl_s + 60`` s idle (``idle_in_transaction_session_timeout``), so the extension also
touches the held connection, and a longer one would outlive it; prepared transactions keep
their locks while they wait, so approvals stay short too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import select

from gateway.admin.schemas import TtlView
from gateway.auth.service import Principal
from gateway.errors import Conflict, NotFound
from gateway.ledger import models, rows
from gateway.ledger import transitions as ledger
from gateway.ledger.rows import CallRow
from gateway.ledger.states import CallStatus, TurnStatus
from gateway.ledger.transitions import Move, StaleTransition
from gateway.runtime import Runtime
from gateway.sessions.scope import scope_of
from gateway.tasks import outbox
from gateway.tasks.outbox import COMPENSATE

S, T = CallStatus, TurnStatus
CALLS = models.table_of(models.Call)
TURNS = models.table_of(models.Turn)


def _by(key: Principal, action: str, **more: Any) -> dict[str, Any]:
    return {"by": "admin", "key": key.key_id, "action": action, **more}


def load_call(rt: Runtime, tenants: list[str], call_id: str) -> CallRow:
    with rt.dbs.ledger.connect() as conn:
        return rows.load_call(conn, call_id, tenants)


def retry_compensation(rt: Runtime, key: Principal, call: CallRow) -> CallRow:
    """``compensation_failed → compensating`` with a new outbox row, in one transaction; the
    tool worker then runs the compensation again (same idempotency key downstream)."""
    if call.status != S.COMPENSATION_FAILED:
        raise Conflict(f"call {call.id!r} is {call.status}; only a call whose compensation "
                       "failed can be retried", code="not_compensation_failed")
    try:
        with rt.dbs.ledger.begin() as conn:
            ledger.transition_call(conn, call.subject, S.COMPENSATION_FAILED, S.COMPENSATING,
                                   detail=_by(key, "retry_compensation"))
            outbox.enqueue(conn, [call.id], COMPENSATE, rt.settings.relay_grace_s)
    except StaleTransition as error:
        raise Conflict(f"call {call.id!r} changed meanwhile", code="busy") from error
    rt.publish([call.id])
    call.status = S.COMPENSATING
    return call


def _later(current: datetime | None, seconds: int, ttl_s: float, what: str) -> datetime:
    at = ledger.now()
    bound = at + timedelta(seconds=ttl_s)
    base = max(current, at) if current is not None else at
    new = min(base + timedelta(seconds=seconds), bound)
    if current is not None and new - current < timedelta(seconds=1):
        raise Conflict(f"{what} already expires at {current.isoformat()}; an extension reaches "
                       f"at most {ttl_s:g} s from now", code="ttl_at_bound")
    return new


def extend_turn(rt: Runtime, key: Principal, tenants: list[str], turn_id: str,
                seconds: int) -> TtlView:
    with rt.dbs.ledger.connect() as conn:
        found = conn.execute(select(TURNS.c.session_id, TURNS.c.tenant).where(
            TURNS.c.id == turn_id, TURNS.c.tenant.in_(tenants))).first()
    if found is None:
        raise NotFound(f"turn {turn_id!r} not found")
    with scope_of(rt, found.tenant, found.session_id, turn_id) as scope:
        turn = scope.turn
        if turn.status != T.OPEN:
            raise Conflict(f"turn {turn_id!r} is {turn.status}", code="turn_not_open")
        with rt.dbs.ledger.connect() as conn:  # the ledger's, not the cached scope's: the
            # reaper or another operator may have moved it
            previous = conn.execute(select(TURNS.c.expires_at).where(
                TURNS.c.id == turn_id)).scalar_one()
        new = _later(previous, seconds, rt.settings.turn_ttl_s, f"turn {turn_id!r}")
        _touch_held(rt, turn_id)
        move = Move(turn.subject, T.OPEN, T.OPEN,
                    _by(key, "extend_ttl", expires_at=new.isoformat()))
        try:
            with rt.dbs.ledger.begin() as conn:
                ledger.update_in_status(conn, models.Turn, turn_id, move, {"expires_at": new})
        except StaleTransition as error:
            raise Conflict(f"turn {turn_id!r} changed meanwhile", code="busy") from error
        turn.expires_at = new
    return TtlView(id=turn_id, kind="turn", expires_at=new, previous=previous)


def _touch_held(rt: Runtime, turn_id: str) -> None:
    """One statement on each connection the turn holds here: it restarts Postgres's idle
    timer, which would otherwise end the transaction before the extended TTL."""
    hold = rt.holds.get(turn_id)
    if hold is None:
        return
    try:
        for held in hold.connections.values():
            held.execute("SELECT 1")
    except psycopg.Error as error:
        raise Conflict(f"the transaction of turn {turn_id!r} has failed; cancel the turn",
                       code="turn_transaction_failed") from error


def extend_call(rt: Runtime, key: Principal, call: CallRow, seconds: int) -> TtlView:
    """A staged call's TTL (under its session's lock) or a waiting approval's expiry."""
    if call.status == S.AWAITING_APPROVAL and call.requires_approval:
        return _extend_call(rt, key, call, "approval_expires_at", call.approval_expires_at,
                            seconds, rt.settings.approval_ttl_s)
    if call.status != S.STAGED:
        raise Conflict(f"call {call.id!r} is {call.status}: only a staged call or one awaiting "
                       "its own approval has a TTL to extend", code="no_ttl")
    with scope_of(rt, call.tenant, call.session_id, call.turn_id) as scope:
        current = scope.by_id(call.id)
        if scope.turn.status != T.OPEN or current.status != S.STAGED:
            raise Conflict(f"call {call.id!r} is no longer staged in an open turn",
                           code="call_not_live")
        view = _extend_call(rt, key, current, "expires_at", current.expires_at, seconds,
                            rt.settings.staged_ttl_s)
        current.expires_at = view.expires_at
    return view


def _extend_call(rt: Runtime, key: Principal, call: CallRow, column: str,
                 current: datetime | None, seconds: int, ttl_s: float) -> TtlView:
    new = _later(current, seconds, ttl_s, f"call {call.id!r}")
    move = Move(call.subject, call.status, call.status,
                _by(key, "extend_ttl", column=column, expires_at=new.isoformat()))
    try:
        with rt.dbs.ledger.begin() as conn:
            ledger.update_in_status(conn, models.Call, call.id, move, {column: new})
    except StaleTransition as error:
        raise Conflict(f"call {call.id!r} changed meanwhile", code="busy") from error
    kind = "approval" if column == "approval_expires_at" else "staged"
    return TtlView(id=call.id, kind=kind, expires_at=new, previous=current)

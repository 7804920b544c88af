"""A turn's life outside its commit: opening it, and ending it without releasing anything.

A session has at most one unresolved turn. ``open_next_turn`` opens the next once the last is
resolved; ``cancel_turn`` (the client), ``expire_turn`` (the TTL reaper) and ``abort_turn`` (a
failed commit, or recovery of a turn whose gateway died) roll back what the turn holds and move
every live call and the turn to a final status. Committing is ``gateway.turns.commit``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from gateway import metrics
from gateway.calls import service as calls_service
from gateway.errors import Conflict, draining
from gateway.ledger import models
from gateway.ledger.rows import TurnRow, TurnScope, load_scope, load_turn
from gateway.ledger.states import RESOLVED_TURN_STATUSES, CallStatus, TurnStatus
from gateway.ledger.transitions import (
    Move,
    batched,
    create_row,
    now,
    transition_call,
    transition_turn,
)
from gateway.runtime import Runtime

S, T = CallStatus, TurnStatus


def insert_turn(conn: Connection, rt: Runtime, tenant: str, session_id: str,
                seq: int) -> TurnRow:
    """Write a new open turn; returns it as the ledger now has it (its times are set here, so
    nothing needs reading back)."""
    at = now()
    turn = TurnRow(id=models.new_id("turn"), session_id=session_id, tenant=tenant, seq=seq,
                     status=T.OPEN, opened_at=at,
                     expires_at=at + timedelta(seconds=rt.settings.turn_ttl_s),
                     decided_at=None, error=None)
    create_row(conn, models.Turn, vars(turn), [Move(turn.subject, None, T.OPEN)])
    return turn


def open_next_turn(rt: Runtime, tenant: str, session_id: str) -> TurnScope:
    """Open the session's next turn (under the session's lock) and keep it as the session's
    scope: the first call of the turn then needs no read of the ledger. A draining gateway
    opens none: it lets the session go, and the client's retry reaches a gateway that stays."""
    if rt.draining:
        rt.disown(session_id)
        raise draining()
    rt.forget_scope(session_id)
    with rt.dbs.ledger.begin() as conn:
        last = load_turn(conn, tenant, session_id, None)
        if last.status not in RESOLVED_TURN_STATUSES:
            raise Conflict(f"turn {last.id!r} is still {last.status}; commit or cancel it first",
                           code="turn_unresolved")
        scope = TurnScope(insert_turn(conn, rt, tenant, session_id, last.seq + 1))
    rt.scopes[session_id] = scope
    return scope


def move_turn(rt: Runtime, turn: TurnRow, target: str, **values: Any) -> None:
    """One statement in autocommit: ``open → committing`` arbitrates at once (visibility does
    not wait for the WAL flush, and a server crash before the decision aborts the turn)."""
    with rt.dbs.fast() as conn:
        transition_turn(conn, turn.subject, turn.status, target, values)
    turn.status = target


def end_held(rt: Runtime, scope: TurnScope, reason: str) -> bool:
    """End what this gateway holds of the turn: cancel the turn (``reason``) while it is open,
    else let go of the hold, since the ledger decided the turn without this gateway. Whether
    the turn was cancelled."""
    if scope.turn.status == T.OPEN:
        cancel_turn(rt, scope, reason)
        return True
    rt.holds.release(scope.turn.id)
    return False


def end_turn(rt: Runtime, scope: TurnScope, via: str | None, target: str, call_target: str,
              reason: str) -> None:
    """Roll back what the turn holds and move every live call and the turn to a final state."""
    hold = rt.holds.get(scope.turn.id)
    if hold is not None:
        hold.rollback()
    rt.holds.drop(scope.turn.id)
    at = now()
    if via is not None:
        move_turn(rt, scope.turn, via)
    for call in [c for c in scope.calls if c.live and c.runner == "task"]:
        calls_service.drop_task_call(rt, call, call_target, reason)
    with rt.dbs.fast() as conn, conn.transaction(), batched(conn):
        for call in [c for c in scope.calls if c.live]:
            transition_call(conn, call.subject, call.status, call_target, {"decided_at": at},
                            {"reason": reason})
            metrics.call_moved(call.effect, call_target)
            call.status = call_target
        transition_turn(conn, scope.turn.subject, scope.turn.status, target,
                        {"decided_at": at, "error": {"reason": reason}})
    scope.turn.status = target


def cancel_turn(rt: Runtime, scope: TurnScope, reason: str = "cancelled by the client") -> None:
    if scope.turn.status != T.OPEN:
        raise Conflict(f"turn {scope.turn.id!r} is {scope.turn.status}", code="turn_not_open")
    end_turn(rt, scope, T.CANCELLING, T.CANCELLED, S.CANCELLED, reason)


def expire_turn(rt: Runtime, scope: TurnScope) -> None:
    end_turn(rt, scope, None, T.EXPIRED, S.EXPIRED, "turn TTL passed")


def abort_turn(rt: Runtime, scope: TurnScope, reason: str) -> None:
    end_turn(rt, scope, None, T.ABORTED, S.ABORTED, reason)


def reload(rt: Runtime, tenant: str, session_id: str, turn_id: str) -> TurnScope:
    """The turn as the ledger has it now (bypassing the session's cached scope)."""
    with rt.dbs.ledger.connect() as conn:
        return load_scope(conn, tenant, session_id, turn_id)

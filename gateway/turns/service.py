"""Turn lifecycle: open, commit, cancel, expire, abort (DESIGN §3).

This module is the one place that releases a speculative effect: ``commit_turn`` makes the held
transaction durable, and nothing else in the gateway commits tool data.

Commit order: compare-and-set ``open → committing`` on the turn row (this arbitrates against a
concurrent cancel or expiry); cancel the calls not kept; run staged calls in the turn
transaction; record the decision (commit marker with every kept call's outcome) atomically with
the effects; then mark calls and turn in the ledger. A crash after the decision is finished by
the reconciler from the marker, a crash before it leaves nothing (Postgres rolls back).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, insert

from gateway import metrics
from gateway.calls import placeholders
from gateway.calls import service as calls_service
from gateway.calls.execution import Outcome, run_db_tool
from gateway.calls.state import CallState, TurnScope, TurnState, load_scope, load_turn
from gateway.errors import Conflict, InvalidArguments
from gateway.ledger import models
from gateway.ledger.service import (
    APPROVAL,
    COMMIT,
    CallMove,
    Move,
    batched,
    create_row,
    ensure_chain,
    now,
    transition_call,
    transition_calls,
    transition_turn,
    write_decision,
)
from gateway.ledger.states import RESOLVED_TURN_STATUSES, CallStatus, TurnStatus
from gateway.runtime import Runtime

log = logging.getLogger("specgate.turns")
S, T = CallStatus, TurnStatus


def insert_turn(conn: Connection, rt: Runtime, tenant: str, session_id: str,
                seq: int) -> TurnState:
    """Write a new open turn; returns it as the ledger now has it (its times are set here, so
    nothing needs reading back)."""
    at = now()
    turn = TurnState(id=models.new_id("turn"), session_id=session_id, tenant=tenant, seq=seq,
                     status=T.OPEN, opened_at=at,
                     expires_at=at + timedelta(seconds=rt.settings.turn_ttl_s),
                     decided_at=None, error=None)
    create_row(conn, models.Turn, vars(turn), [Move(turn.subject, None, T.OPEN)])
    return turn


def create_session(rt: Runtime, tenant: str, metadata: dict[str, Any]) -> str:
    session_id = models.new_id("ses")
    with rt.dbs.ledger.begin() as conn:
        ensure_chain(conn, tenant)
        conn.execute(insert(models.Session).values(
            id=session_id, tenant=tenant, meta=metadata, owner_id=rt.gateway_id,
            owner_seen_at=now(),
        ))
        insert_turn(conn, rt, tenant, session_id, 1)
    return session_id


def open_next_turn(rt: Runtime, tenant: str, session_id: str) -> TurnScope:
    """Open the session's next turn (under the session's lock) and keep it as the session's
    scope: the first call of the turn then needs no read of the ledger."""
    rt.forget_scope(session_id)
    with rt.dbs.ledger.begin() as conn:
        last = load_turn(conn, tenant, session_id, None)
        if last.status not in RESOLVED_TURN_STATUSES:
            raise Conflict(f"turn {last.id!r} is still {last.status}; commit or cancel it first",
                           code="turn_unresolved")
        scope = TurnScope(insert_turn(conn, rt, tenant, session_id, last.seq + 1))
    rt.scopes[session_id] = scope
    return scope


def _move_turn(rt: Runtime, turn: TurnState, target: str, **values: Any) -> None:
    """One statement in autocommit: ``open → committing`` arbitrates at once (visibility does
    not wait for the WAL flush, and a server crash before the decision aborts the turn)."""
    with rt.dbs.fast() as conn:
        transition_turn(conn, turn.subject, turn.status, target, values)
    turn.status = target


def _kept(scope: TurnScope, keep: list[str] | None) -> list[CallState]:
    live = scope.live_by_client()
    if keep is None:
        return list(live.values())
    unknown = [k for k in keep if k not in live]
    if unknown:
        raise InvalidArguments(f"cannot keep {unknown[0]!r}: no live call with that client id",
                               code="unknown_keep")
    return [live[k] for k in keep]


def commit_turn(rt: Runtime, scope: TurnScope, keep: list[str] | None) -> TurnScope:
    if scope.turn.status != T.OPEN:
        raise Conflict(f"turn {scope.turn.id!r} is {scope.turn.status}", code="turn_not_open")
    running = calls_service.unsettled(scope)
    if running and not calls_service.wait_settled(rt, running, rt.settings.settle_wait_s):
        late = [c.client_call_id for c in running if c.status in calls_service.WORKER_OWNED]
        raise Conflict(f"task calls {late} are still running; commit again once they have "
                       "settled, or cancel them", code="calls_unsettled")
    kept = _kept(scope, keep)
    started = time.perf_counter()
    _move_turn(rt, scope.turn, T.COMMITTING)
    dispatch: list[str] = []
    try:
        kept_ids = {c.id for c in kept}
        dropped = [c for c in scope.calls if c.live and c.id not in kept_ids]
        calls_service.cancel_calls(rt, scope, dropped, reason="not kept at commit")
        outcomes = _run_staged(rt, scope)
        dispatch = [c.id for c in scope.calls if c.live and c.runner == "task"
                    and c.status == S.STAGED and outcomes[c.id]["status"] == S.COMMITTED
                    and not c.requires_approval]  # those wait for their approval
        _decide(rt, scope, outcomes, dispatch)
    except Exception as error:
        log.exception("commit of turn %r failed; aborting it", scope.turn.id)
        abort_turn(rt, scope, reason=f"commit failed: {error!r}")
        raise Conflict(f"commit of turn {scope.turn.id!r} failed and the turn was aborted: "
                       f"{error}", code="commit_failed") from error
    finally:
        rt.holds.drop(scope.turn.id)
    finalize(rt, scope, outcomes)
    rt.publish(dispatch)
    metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
    return scope


def _run_staged(rt: Runtime, scope: TurnScope) -> dict[str, dict[str, Any]]:
    """Run staged calls in issue order inside the turn transaction; every live call's outcome."""
    outcomes: dict[str, dict[str, Any]] = {}
    for call in [c for c in scope.calls if c.live]:
        if call.status != S.STAGED:
            outcomes[call.id] = {"status": S.COMMITTED, "result": call.result}
            continue
        outcome = _run_one_staged(rt, scope, call)
        if outcome.ok:
            call.result = outcome.result
            outcomes[call.id] = {"status": S.COMMITTED, "result": outcome.result,
                                 "resolved_arguments": call.resolved_arguments}
        else:
            call.error = outcome.error
            outcomes[call.id] = {"status": S.FAILED, "error": outcome.error}
    return outcomes


def _run_one_staged(rt: Runtime, scope: TurnScope, call: CallState) -> Outcome:
    deps = [scope.by_id(d) for d in call.depends_on]
    if any(d.error is not None for d in deps):
        return Outcome(False, error={"code": "dependency_failed",
                                    "message": "a call this one depends on failed at commit"})
    tool = rt.registry.get(call.tool)
    try:
        arguments = placeholders.resolve(call.arguments, scope.results_for_commit(call))
        tool.spec.validate(arguments)
    except placeholders.PlaceholderError as error:
        return Outcome(False, error={"code": "placeholder_unresolvable", "message": str(error)})
    except ValidationError as error:
        return Outcome(False, error=calls_service.validation_error(error, tool.name).to_body()
                       ["error"])
    call.resolved_arguments = arguments
    if call.runner == "task":  # runs in the tool worker once the decision is durable
        return Outcome(True, result=None)
    keep = call.effect != "safe"
    return run_db_tool(rt, calls_service.identity(call), tool, arguments, keep=keep)


def approval_waits(scope: TurnScope, outcomes: dict[str, Any]) -> set[str]:
    """The ``db`` calls whose effects wait for an approval after commit: once a ``db`` call
    that needs approval ran at commit, every ``db`` call with an effect in the turn, because
    they share the turn transaction (DESIGN §3: the turn is held PREPAREd)."""
    ran = [c for c in scope.calls if c.runner == "db" and c.id in outcomes
           and outcomes[c.id]["status"] == S.COMMITTED]
    if not any(c.requires_approval for c in ran):
        return set()
    return {c.id for c in ran if c.effect != "safe" or c.requires_approval}


def _decide(rt: Runtime, scope: TurnScope, outcomes: dict[str, dict[str, Any]],
            dispatch: list[str]) -> None:
    grace = rt.settings.relay_grace_s
    hold = rt.holds.get(scope.turn.id)
    if approval_waits(scope, outcomes):
        if hold is not None and hold.connections:
            hold.prepare_for_approval(rt.dbs.ledger, scope.turn.id, outcomes, dispatch, grace)
        else:  # nothing held (only reads wait): the decision alone records the wait
            with rt.dbs.ledger.begin() as conn:
                write_decision(conn, scope.turn.id, APPROVAL, outcomes, dispatch=dispatch,
                               grace_s=grace)
        return
    if hold is not None and hold.connections:
        hold.commit(rt.dbs.ledger, scope.turn.id, outcomes, dispatch, grace)
        return
    if dispatch:  # the decision orders effects: it must be durable before anyone acts on it
        with rt.dbs.ledger.begin() as conn:
            write_decision(conn, scope.turn.id, COMMIT, outcomes, dispatch=dispatch,
                           grace_s=grace)
        return
    # Nothing held, no effect to make durable: the decision needs no WAL-flush wait either.
    with rt.dbs.fast() as conn:
        write_decision(conn, scope.turn.id, COMMIT, outcomes)


def finalize(rt: Runtime, scope: TurnScope, outcomes: dict[str, dict[str, Any]]) -> None:
    """After the decision: mark every decided call and the turn in one ledger transaction.
    It does not wait for the WAL flush: the durable commit marker holds the same outcomes, and
    the reconciler finishes from it after a crash."""
    at = now()
    moves = []
    for call in scope.calls:
        outcome = outcomes.get(call.id)
        if outcome is None or not call.live:
            continue
        values: dict[str, Any] = {"decided_at": at}
        if outcome["status"] == S.FAILED:
            values.update(error=outcome["error"], finished_at=at)
        elif "result" in outcome:
            values.update(result=outcome["result"])
        if "resolved_arguments" in outcome:
            values["resolved_arguments"] = outcome["resolved_arguments"]
        moves.append(CallMove(call.subject, call.status, outcome["status"], values))
    held = approval_waits(scope, outcomes)
    waiting = [CallMove(m.subject, S.COMMITTED, S.AWAITING_APPROVAL, {})
               for m in moves if m.target == S.COMMITTED
               and (m.subject.call_id in held
                    or scope.by_id(m.subject.call_id or "").requires_approval)]
    with rt.dbs.fast() as conn, conn.transaction():
        transition_calls(conn, scope.turn.tenant, moves)
        transition_calls(conn, scope.turn.tenant, waiting)
        transition_turn(conn, scope.turn.subject, scope.turn.status, T.COMMITTED,
                        {"decided_at": at})
    for move in [*moves, *waiting]:
        call = scope.by_id(move.subject.call_id or "")
        metrics.call_moved(call.effect, move.target)
        call.status = move.target
        for key, value in move.values.items():
            setattr(call, key, value)
    scope.turn.status = T.COMMITTED


def end_turn(rt: Runtime, scope: TurnScope, via: str | None, target: str, call_target: str,
              reason: str) -> None:
    """Roll back what the turn holds and move every live call and the turn to a final state."""
    hold = rt.holds.get(scope.turn.id)
    if hold is not None:
        hold.rollback()
    rt.holds.drop(scope.turn.id)
    at = now()
    if via is not None:
        _move_turn(rt, scope.turn, via)
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

"""The commit protocol: the one place in the gateway that releases a speculative effect.

``commit_turn`` makes a turn's held effects durable; nothing else in the gateway commits tool
data (docs/architecture.md#commit-protocol). Its order:

1. compare-and-set the turn ``open → committing`` (this arbitrates against a concurrent cancel or
   expiry, in autocommit, so the winner is known at once);
2. cancel the live calls the client did not keep (with their dependents);
3. run the staged calls, in issue order, inside the turn transaction;
4. record the decision (``gateway.transactions.decision``: the commit marker with every kept call's
   outcome, and the outbox rows of the task calls it orders) atomically with the effects: in the
   turn's own transaction when the ledger is its only database, else between PREPARE and COMMIT
   PREPARED (``gateway.transactions.twophase``);
5. mark the calls and the turn in the ledger (``finalize``).

A crash after step 4 is finished by recovery from the marker; a crash before it leaves nothing
(Postgres rolls the held transactions back, and an orphaned PREPARE is presumed aborted).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from gateway import metrics
from gateway.calls import placeholders
from gateway.calls import service as calls_service
from gateway.calls.execution import Outcome, run_db_tool
from gateway.errors import Conflict, InvalidArguments
from gateway.ledger.rows import CallRow, TurnScope
from gateway.ledger.states import CallStatus, TurnStatus
from gateway.ledger.transitions import (
    CallMove,
    StaleTransition,
    now,
    transition_calls,
    transition_turn,
)
from gateway.runtime import Runtime
from gateway.transactions import twophase
from gateway.transactions.decision import APPROVAL, COMMIT, write_decision
from gateway.turns.service import abort_turn, move_turn

log = logging.getLogger("specgate.turns")
S, T = CallStatus, TurnStatus


def _kept(scope: TurnScope, keep: list[str] | None) -> list[CallRow]:
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
    try:
        move_turn(rt, scope.turn, T.COMMITTING)
    except StaleTransition:
        # Decided elsewhere (cancelled, expired, or aborted by a gateway that took the session
        # over): what this gateway still holds of the turn can never commit.
        rt.holds.release(scope.turn.id)
        raise
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


def _run_one_staged(rt: Runtime, scope: TurnScope, call: CallRow) -> Outcome:
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
    they share the turn transaction, which is held PREPAREd until the approvals resolve it."""
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
            twophase.prepare_for_approval(hold, rt.dbs.ledger, scope.turn.id, outcomes,
                                          dispatch, grace)
        else:  # nothing held (only reads wait): the decision alone records the wait
            with rt.dbs.ledger.begin() as conn:
                write_decision(conn, scope.turn.id, APPROVAL, outcomes, dispatch=dispatch,
                               grace_s=grace)
        return
    if hold is not None and hold.connections:
        twophase.commit_hold(hold, rt.dbs.ledger, scope.turn.id, outcomes, dispatch, grace)
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
        transition_calls(conn, moves)
        transition_calls(conn, waiting)
        transition_turn(conn, scope.turn.subject, scope.turn.status, T.COMMITTED,
                        {"decided_at": at})
    for move in [*moves, *waiting]:
        call = scope.by_id(move.subject.call_id or "")
        metrics.call_moved(call.effect, move.target)
        call.status = move.target
        for key, value in move.values.items():
            setattr(call, key, value)
    scope.turn.status = T.COMMITTED

"""Issuing and cancelling calls in an open turn (docs/architecture.md#commit-protocol).

Everything here runs under the session's lock with a ``TurnScope`` loaded from the ledger.
All validation happens before the first write, so a refused request changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from gateway import metrics
from gateway.calls import placeholders
from gateway.calls.approvals import issue_token, needs_approval
from gateway.calls.execution import CallIdentity, Outcome, hold_for, run_db_tool
from gateway.calls.schemas import IssueCall
from gateway.calls.settled import FALLBACK_POLL_S
from gateway.errors import Conflict, InvalidArguments
from gateway.ledger import models
from gateway.ledger.rows import CallRow, TurnScope
from gateway.ledger.states import CallStatus, TurnStatus
from gateway.ledger.transitions import Move, StaleTransition, create_row, now, transition_call
from gateway.runtime import Runtime
from gateway.tasks.outbox import COMPENSATE, RUN, enqueue
from gateway.tools.registry import RegisteredTool
from tool_adapters.sdk import Effect, Runner

log = logging.getLogger("specgate.calls")
S = CallStatus


def identity(call: CallRow) -> CallIdentity:
    return CallIdentity(call.id, call.idempotency_key, call.tenant, call.session_id, call.turn_id)


def validation_error(error: ValidationError, tool: str) -> InvalidArguments:
    problems = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()
    ]
    return InvalidArguments(f"arguments do not match the schema of {tool!r}", errors=problems)


def _dependencies(scope: TurnScope, request: IssueCall,
                  superseded: CallRow | None) -> list[CallRow]:
    live = scope.live_by_client()
    if superseded is not None:
        live.pop(superseded.client_call_id, None)
    wanted = list(dict.fromkeys([*request.depends_on, *placeholders.references(request.arguments)]))
    missing = [c for c in wanted if c not in live]
    if missing:
        raise InvalidArguments(
            f"no live call with client id {missing[0]!r} in this turn", code="unknown_dependency"
        )
    return [live[c] for c in wanted]


def _check_request(scope: TurnScope, tool: RegisteredTool, request: IssueCall,
                   ) -> tuple[CallRow | None, list[CallRow], dict[str, Any] | None]:
    """Everything that can refuse the request: (superseded call, dependencies, resolved args
    or None when a dependency has no result yet)."""
    if scope.turn.status != TurnStatus.OPEN:
        raise Conflict(f"turn {scope.turn.id!r} is {scope.turn.status}", code="turn_not_open")
    live = scope.live_by_client()
    superseded = None
    if request.supersedes is not None:
        superseded = live.get(request.supersedes)
        if superseded is None:
            raise InvalidArguments(f"no live call {request.supersedes!r} to supersede",
                                   code="unknown_supersedes")
    if request.client_call_id in live and request.client_call_id != request.supersedes:
        raise Conflict(f"client call id {request.client_call_id!r} is already live in this turn; "
                       "send it with supersedes to amend", code="duplicate_client_call_id")
    unknown = set(request.arguments) - set(tool.spec.parameters.get("properties", {}))
    if unknown:
        raise InvalidArguments(f"unknown argument {sorted(unknown)[0]!r} for {tool.name!r}",
                               code="invalid_arguments")
    deps = _dependencies(scope, request, superseded)
    if any(not d.has_result for d in deps):
        if tool.spec.runner == Runner.TASK and tool.spec.effect != Effect.SENSITIVE:
            waiting = next(d for d in deps if not d.has_result)
            raise Conflict(f"call {waiting.client_call_id!r} has no result yet; issue this "
                           "task call once it has settled (GET /v1/calls/{id}?wait=)",
                           code="dependency_unsettled")
        return superseded, deps, None
    try:
        resolved = placeholders.resolve(request.arguments,
                                        {d.client_call_id: d.result for d in deps})
        tool.spec.validate(resolved)
    except placeholders.PlaceholderError as error:
        raise InvalidArguments(str(error), code="placeholder_unresolvable") from error
    except ValidationError as error:
        raise validation_error(error, tool.name) from error
    return superseded, deps, resolved


def issue_call(rt: Runtime, scope: TurnScope, request: IssueCall,
               ) -> tuple[CallRow, str | None]:
    """Issue a call; returns it and, for a call staged until an approval, the confirmation
    token the app may approve it with (shown this once)."""
    limit = rt.settings.max_calls_per_turn
    if len(scope.calls) >= limit:
        raise Conflict(f"turn {scope.turn.id!r} has issued its {limit} calls "
                       "(SPECGATE_MAX_CALLS_PER_TURN); commit or cancel it", code="turn_full",
                       limit=limit)
    tool = rt.registry.get(request.tool)
    approval = needs_approval(rt.settings, scope.turn.tenant, tool)
    superseded, deps, resolved = _check_request(scope, tool, request)
    runs_now = resolved is not None and tool.spec.effect != Effect.SENSITIVE and not approval
    if runs_now and tool.spec.effect == Effect.REVERSIBLE:
        hold_for(rt, scope.turn.id, tool.adapter.name)  # may refuse (429/503): before any write
    if superseded is not None:
        cancel_calls(rt, scope, [superseded], reason="superseded")
    call = _new_call(scope, tool, request, deps, superseded, approval)
    token = None
    if runs_now and tool.spec.runner == Runner.TASK:
        assert resolved is not None
        _enqueue(rt, scope, call, tool, resolved)
    elif runs_now:
        assert resolved is not None
        _run_now(rt, scope, call, tool, resolved)
    else:
        if approval:
            token = issue_token(rt.settings, call)
        _stage(rt, scope, call, tool, resolved)
    return call, token


def _new_call(scope: TurnScope, tool: RegisteredTool, request: IssueCall,
              deps: list[CallRow], superseded: CallRow | None,
              requires_approval: bool) -> CallRow:
    call_id = models.new_id("call")
    return CallRow(
        id=call_id, tenant=scope.turn.tenant, session_id=scope.turn.session_id,
        turn_id=scope.turn.id, seq=scope.next_seq(), client_call_id=request.client_call_id,
        tool=tool.name, effect=str(tool.spec.effect), runner=str(tool.spec.runner),
        requires_approval=requires_approval, arguments=request.arguments,
        resolved_arguments=None, depends_on=[d.id for d in deps],
        supersedes_id=superseded.id if superseded else None, status=S.PROPOSED, result=None,
        error=None, idempotency_key=call_id, replays=0, created_at=now(),
    )


def _record(rt: Runtime, scope: TurnScope, call: CallRow, moves: list[Move],
            outbox_kind: str | None = None) -> None:
    """Write a new call row, in the status its last move reached, with all of its events (and
    an outbox row for the tool worker, in the same transaction)."""
    row = {k: v for k, v in vars(call).items() if k != "decided_at"}
    with rt.dbs.fast() as conn:
        if outbox_kind is None:
            create_row(conn, models.Call, row, moves)
        else:
            with conn.transaction():
                create_row(conn, models.Call, row, moves)
                enqueue(conn, [call.id], outbox_kind, rt.settings.relay_grace_s)
    for m in moves:
        metrics.call_moved(call.effect, m.target)
    scope.calls.append(call)


def _enqueue(rt: Runtime, scope: TurnScope, call: CallRow, tool: RegisteredTool,
             resolved: dict[str, Any]) -> None:
    """A task call runs in the tool worker: record it ``proposed`` with its outbox row, then
    ring the worker. Its result arrives in the ledger (``?wait=`` or ``GET /v1/calls/{id}``)."""
    call.resolved_arguments = resolved
    _record(rt, scope, call, [Move(call.subject, None, S.PROPOSED, {"tool": tool.name})],
            outbox_kind=RUN)
    rt.publish([call.id])


WORKER_OWNED = frozenset({S.PROPOSED, S.RUNNING})


def refresh(rt: Runtime, calls: Iterable[CallRow]) -> None:
    """Read the ledger's view of task calls the worker may have moved since we last looked."""
    stale = {c.id: c for c in calls if c.runner == Runner.TASK}
    if not stale:
        return
    with rt.dbs.fast() as conn:
        rows = conn.execute(
            "SELECT id, status, result, error, started_at, finished_at, decided_at "
            "FROM calls WHERE id = ANY(%s)", [list(stale)]).fetchall()
    for call_id, status, result, error, started, finished, decided in rows:
        call = stale[call_id]
        call.status, call.result, call.error = status, result, error
        call.started_at, call.finished_at, call.decided_at = started, finished, decided


def unsettled(scope: TurnScope) -> list[CallRow]:
    return [c for c in scope.calls if c.runner == Runner.TASK and c.status in WORKER_OWNED]


def wait_settled(rt: Runtime, calls: list[CallRow], timeout_s: float) -> bool:
    """Wait until none of ``calls`` is still with the worker; False on timeout. Woken by the
    worker's notification (gateway.calls.settled), reading the ledger again each time."""
    deadline = time.monotonic() + timeout_s
    with rt.settled.watching([c.id for c in calls]) as announced:
        while True:
            refresh(rt, calls)
            if not any(c.status in WORKER_OWNED for c in calls):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            announced.wait(min(left, FALLBACK_POLL_S))
            announced.clear()


def drop_task_call(rt: Runtime, call: CallRow, target: str, reason: str) -> None:
    """Take a task call out of its turn (cancelled, expired, aborted). A reversible effect that
    is already made goes to compensation in the same transaction; one still being made is
    compensated by the worker when it completes. The worker may move the call at this very
    moment: a lost compare-and-set reads the status again and retries."""
    for _ in range(10):
        compensate = call.status == S.HELD and call.effect == Effect.REVERSIBLE
        try:
            with rt.dbs.fast() as conn, conn.transaction():
                transition_call(conn, call.subject, call.status, target, {"decided_at": now()},
                                {"reason": reason})
                if compensate:
                    transition_call(conn, call.subject, target, S.COMPENSATING)
                    enqueue(conn, [call.id], COMPENSATE, rt.settings.relay_grace_s)
        except StaleTransition:
            refresh(rt, [call])
            if not call.live:
                return
            continue
        metrics.call_moved(call.effect, target)
        call.status, call.decided_at = target, now()
        if compensate:
            metrics.call_moved(call.effect, S.COMPENSATING)
            call.status = S.COMPENSATING
            rt.publish([call.id])
        return
    raise Conflict(f"call {call.id!r} kept changing while being cancelled; try again",
                   code="busy")


def _run_now(rt: Runtime, scope: TurnScope, call: CallRow, tool: RegisteredTool,
             resolved: dict[str, Any]) -> None:
    """Run the tool, then write the call once with its whole history (proposed, running, and
    how it ended). Nothing needs recording first: a ``db`` call's effect lives in a transaction
    this process holds, so a crash before the write takes the effect with it."""
    keep = tool.spec.effect == Effect.REVERSIBLE
    call.status, call.started_at, call.resolved_arguments = S.RUNNING, now(), resolved
    outcome = run_db_tool(rt, identity(call), tool, resolved, keep=keep)
    if outcome.ok:
        final, detail = (S.HELD if keep else S.SUCCEEDED), None
        call.result = outcome.result
    else:
        final, detail = S.FAILED, {"error": outcome.error}
        call.error = outcome.error
    call.status, call.finished_at = final, now()
    moves = [Move(call.subject, None, S.PROPOSED, {"tool": tool.name}),
             Move(call.subject, S.PROPOSED, S.RUNNING), Move(call.subject, S.RUNNING, final,
                                                             detail)]
    try:
        _record(rt, scope, call, moves)
    except BaseException:
        hold = rt.holds.get(scope.turn.id)
        if hold is not None:
            hold.undo(call.id)  # the last savepoint: no later call to replay
        raise


def move(rt: Runtime, call: CallRow, target: str, detail: dict[str, Any] | None = None,
         **values: Any) -> None:
    """Transition one call in its own ledger transaction and mirror it in memory. These are
    the states of a still-open turn, written without waiting for the WAL flush (see db.py)."""
    with rt.dbs.fast() as conn:
        transition_call(conn, call.subject, call.status, target, values, detail)
    metrics.call_moved(call.effect, target)
    call.status = target
    for key, value in values.items():
        setattr(call, key, value)


def _stage(rt: Runtime, scope: TurnScope, call: CallRow, tool: RegisteredTool,
           resolved: dict[str, Any] | None) -> None:
    """Validate a call that waits for the commit (its preflight, once its arguments are known)
    and write it once: ``staged``, or ``failed`` when the preflight refuses it."""
    call.resolved_arguments = resolved
    moves = [Move(call.subject, None, S.PROPOSED, {"tool": tool.name})]
    if resolved is not None and tool.spec.preflight is not None:
        outcome = run_db_tool(rt, identity(call), tool, resolved, keep=False, hook="preflight")
        if not outcome.ok:
            call.status, call.error = S.FAILED, outcome.error
            call.started_at = call.finished_at = now()
            moves += [Move(call.subject, S.PROPOSED, S.RUNNING),
                      Move(call.subject, S.RUNNING, S.FAILED, {"preflight": True})]
            _record(rt, scope, call, moves)
            return
    call.status = S.STAGED
    call.expires_at = now() + timedelta(seconds=rt.settings.staged_ttl_s)
    _record(rt, scope, call, [*moves, Move(call.subject, S.PROPOSED, S.STAGED)])


def doomed_by(scope: TurnScope, roots: Iterable[CallRow]) -> list[CallRow]:
    """The roots and every live call depending on them, transitively, in issue order."""
    doomed = {c.id for c in roots}
    for call in scope.calls:
        if call.live and doomed.intersection(call.depends_on):
            doomed.add(call.id)
    return [c for c in scope.calls if c.id in doomed and c.live]


def cancel_calls(rt: Runtime, scope: TurnScope, roots: Iterable[CallRow], *, reason: str,
                 target: str = S.CANCELLED) -> list[CallRow]:
    """Cancel calls with cascade over ``depends_on``; undo their held effects and replay the
    later live calls of the same transaction. Returns every call whose status changed."""
    doomed = doomed_by(scope, roots)
    hold = rt.holds.get(scope.turn.id)
    to_replay: list[str] = []
    for call in doomed:
        if hold is not None:
            to_replay.extend(hold.undo(call.id))
    changed = []
    for call in doomed:
        if call.runner == Runner.TASK:
            drop_task_call(rt, call, target, reason)
        else:
            move(rt, call, target, {"reason": reason}, decided_at=now())
        changed.append(call)
    doomed_ids = {c.id for c in doomed}
    replay = [c for c in scope.calls if c.id in set(to_replay) - doomed_ids and c.live]
    changed.extend(_replay(rt, scope, replay))
    orphans = [c for c in scope.calls if c.live and any(
        not scope.by_id(d).live and not scope.by_id(d).has_result for d in c.depends_on)]
    if orphans:
        changed.extend(cancel_calls(rt, scope, orphans, reason="a dependency is gone",
                                    target=target))
    return changed


def _replay(rt: Runtime, scope: TurnScope, calls: list[CallRow]) -> list[CallRow]:
    """Re-run calls whose transaction was rolled back under them; a different result than the
    agent saw makes the call ``conflict`` (its effect undone) and the agent is told."""
    changed: list[CallRow] = []
    for call in calls:
        if any(not scope.by_id(d).live for d in call.depends_on):
            continue  # cancelled by the orphan pass of the caller
        tool = rt.registry.get(call.tool)
        keep = call.status == S.HELD
        try:
            arguments = placeholders.resolve(call.arguments, scope.results_for(call))
            outcome = run_db_tool(rt, identity(call), tool, arguments, keep=keep)
        except placeholders.PlaceholderError as error:
            outcome = Outcome(False, error={"code": "placeholder_unresolvable",
                                            "message": str(error)})
        if outcome.ok and outcome.result == call.result:
            with rt.dbs.fast() as conn:
                conn.execute("UPDATE calls SET replays = replays + 1 WHERE id = %s", [call.id])
            call.replays += 1
            continue
        hold = rt.holds.get(scope.turn.id)
        if keep and outcome.ok and hold is not None:
            hold.undo(call.id)
        seen = {"result": outcome.result, "error": outcome.error}
        move(rt, call, S.CONFLICT, {"previous": call.result, "replayed": seen},
             error={"code": "conflict", "message": "replaying the call after a cancellation "
                    "gave another result than the one returned", "replayed": seen},
             decided_at=now())
        changed.append(call)
    return changed

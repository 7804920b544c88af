"""What the tool worker does with a call id: the ``task`` runner
(docs/architecture.md#effect-classes).

A message names a call. The worker takes the call's oldest unfinished outbox row with
``FOR UPDATE SKIP LOCKED`` and keeps it locked while it works, so two deliveries of one message
(or a relay resend) never run the same work twice at once, and a worker that dies releases the
row with its connection — the relay then sends the call again and the next worker retries with
the same idempotency key. The ledger decides what a row means now:

- ``run`` of a ``proposed``/``running`` call: run the tool (safe → ``succeeded``, reversible →
  ``held``); if the turn dropped the call meanwhile, a completed reversible effect is handed to
  compensation instead.
- ``run`` of a ``committed``/``dispatched`` call (sensitive, after the decision): run it exactly
  once more per attempt → ``succeeded | failed``.
- ``compensate`` of a ``compensating`` call: run its ``compensate`` → ``compensated``; retried
  with doubling delays, ``compensation_failed`` with the error once out of attempts.

Tool errors (``ToolError``) are final. Any other exception is transient: the row is retried
after ``task_retry_base_s · 2^attempt`` until ``task_max_attempts``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from gateway.calls.execution import CallIdentity, tool_context
from gateway.calls.settled import notify
from gateway.config import Settings
from gateway.db import Databases
from gateway.ledger.rows import CallRow, find_call
from gateway.ledger.states import DROPPED_CALL_STATUSES, CallStatus
from gateway.ledger.transitions import StaleTransition, now, transition_call
from gateway.tasks.outbox import COMPENSATE, enqueue
from gateway.tools.registry import RegisteredTool, Registry
from tool_adapters.sdk import ToolContext, ToolError

log = logging.getLogger("specgate.worker")
S = CallStatus

# Statuses a ``run`` row may find, and the status the worker moves the call to first.
_START = {S.PROPOSED: S.RUNNING, S.RUNNING: None, S.COMMITTED: S.DISPATCHED,
          S.APPROVED: S.DISPATCHED, S.DISPATCHED: None}
COMPENSATION_QUEUED = "compensation queued"


@dataclass
class WorkerContext:
    """What a worker process needs: settings, databases, registry, and a way to publish."""

    settings: Settings
    dbs: Databases
    registry: Registry
    publish: Callable[[list[str]], object]


@dataclass(frozen=True, slots=True)
class _Attempt:
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None
    transient: bool = False


def process(w: WorkerContext, call_id: str) -> str:
    """Work on the call's next outbox row; returns what happened (for logs and tests)."""
    with w.dbs.ledger.connect() as conn, conn.begin():
        row = conn.execute(text(
            "SELECT id, kind, attempts FROM outbox WHERE call_id = :c AND done_at IS NULL "
            "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"), {"c": call_id}).first()
        if row is None:
            return "nothing to do"
        call = find_call(conn, call_id)
        if call is None:
            _done(conn, row.id, "call not found")
            return "call not found"
        tool = w.registry.get(call.tool)
        # Postgres ends the lock of a worker that hangs or is cut off (a dead one closes it).
        limit_ms = int((tool.spec.timeout_s + 60) * 1000)
        conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {limit_ms}")
        if row.kind == COMPENSATE:
            result = _compensate(w, conn, row, call, tool)
        else:
            result = _run(w, conn, row, call, tool)
    if result == COMPENSATION_QUEUED:  # committed now: ring for the row _finish wrote
        w.publish([call_id])
    return result


def _done(conn: Connection, row_id: int, note: str | None = None) -> None:
    conn.execute(text("UPDATE outbox SET done_at = now(), attempts = attempts + 1, "
                      "last_error = coalesce(:note, last_error) WHERE id = :id"),
                 {"id": row_id, "note": note})


def _later(conn: Connection, row_id: int, delay_s: float, error: str | None,
           *, count: bool = True) -> None:
    conn.execute(text(
        "UPDATE outbox SET attempts = attempts + :n, last_error = :error, "
        "next_at = now() + make_interval(secs => :delay) WHERE id = :id"),
        {"id": row_id, "n": 1 if count else 0, "error": error, "delay": delay_s})


def _move_now(w: WorkerContext, call: CallRow, target: str, **values: Any) -> bool:
    """A visible status change outside the row-lock transaction (so a cancel racing it is
    never blocked behind the tool). False when another writer got there first."""
    try:
        with w.dbs.fast() as fast:
            transition_call(fast, call.subject, call.status, target, values)
    except StaleTransition:
        return False
    call.status = target
    return True


def invoke(w: WorkerContext, tool: RegisteredTool, fn: Callable[[ToolContext], Any],
           identity: CallIdentity) -> Any:
    """Run a tool function with its context: the adapter's settings, and a session on the
    adapter's database when it has tables, committed when the function returns."""
    adapter = tool.adapter
    session = None
    if adapter.metadata is not None:
        session = Session(bind=w.dbs.tool_engine(adapter.name))
    ctx = tool_context(identity, tool, session, w.settings.adapter_settings.get(adapter.name, {}))
    try:
        value = fn(ctx)
        if session is not None:
            session.commit()
        return value
    finally:
        if session is not None:
            session.close()


def _invoke(w: WorkerContext, call: CallRow, tool: RegisteredTool,
            fn: Callable[[ToolContext], Any], key: str) -> _Attempt:
    identity = CallIdentity(call.id, key, call.tenant, call.session_id, call.turn_id)
    try:
        return _Attempt(True, result=invoke(w, tool, fn, identity))
    except ToolError as error:
        return _Attempt(False, error={"code": error.code, "message": error.message})
    except Exception as error:  # transient (network, a service down) or a bug: retried
        log.warning("call %s (%s) failed: %r", call.id, tool.name, error)
        return _Attempt(False, error={"code": "tool_unavailable", "message": repr(error)},
                        transient=True)


def _message(attempt: _Attempt) -> str | None:
    return None if attempt.error is None else str(attempt.error.get("message"))


def _backoff(w: WorkerContext, attempts: int) -> float:
    return float(w.settings.task_retry_base_s * (2 ** attempts))


def _run(w: WorkerContext, conn: Connection, row: Any, call: CallRow,
         tool: RegisteredTool) -> str:
    if call.status == S.STAGED:  # decided, but the gateway has not marked it yet
        _later(conn, row.id, 1.0, None, count=False)
        return "waiting for the decision to be recorded"
    if call.status not in _START:
        _done(conn, row.id, f"nothing to run: the call is {call.status}")
        return f"skipped ({call.status})"
    start = _START[S(call.status)]
    if start is not None and not _move_now(w, call, start, started_at=now()):
        refreshed = find_call(conn, call.id)
        _done(conn, row.id, f"nothing to run: the call is {refreshed and refreshed.status}")
        return "skipped (moved meanwhile)"
    arguments = call.resolved_arguments or call.arguments
    attempt = _invoke(w, call, tool, lambda ctx: tool.spec.invoke(ctx, arguments),
                      call.idempotency_key)
    if attempt.transient and row.attempts + 1 < w.settings.task_max_attempts:
        _later(conn, row.id, _backoff(w, row.attempts), _message(attempt))
        return "retry later"
    return _finish(w, conn, row, call, tool, attempt)


def _finish(w: WorkerContext, conn: Connection, row: Any, call: CallRow,
            tool: RegisteredTool, attempt: _Attempt) -> str:
    values: dict[str, Any] = {"finished_at": now()}
    if attempt.ok:
        values["result"] = attempt.result
    else:
        values["error"] = attempt.error
    current = conn.execute(text("SELECT status FROM calls WHERE id = :c FOR UPDATE"),
                           {"c": call.id}).scalar()
    if current == S.RUNNING:
        target = (S.HELD if tool.spec.effect == "reversible" else S.SUCCEEDED) \
            if attempt.ok else S.FAILED
    elif current == S.DISPATCHED:
        target = S.SUCCEEDED if attempt.ok else S.FAILED
    elif current in DROPPED_CALL_STATUSES and attempt.ok and tool.spec.effect == "reversible":
        # The turn let the call go while its effect was being made: undo it.
        transition_call(conn, call.subject, str(current), S.COMPENSATING, values,
                        {"reason": "completed after the call was dropped"})
        enqueue(conn, [call.id], COMPENSATE, w.settings.relay_grace_s)
        _done(conn, row.id)
        return COMPENSATION_QUEUED
    else:
        _done(conn, row.id, f"result dropped: the call is {current}")
        return f"dropped ({current})"
    detail = None if attempt.ok else {"error": attempt.error}
    transition_call(conn, call.subject, str(current), target, values, detail)
    notify(conn, call.id)
    _done(conn, row.id)
    return str(target)


def _compensate(w: WorkerContext, conn: Connection, row: Any, call: CallRow,
                tool: RegisteredTool) -> str:
    if call.status != S.COMPENSATING:
        _done(conn, row.id, f"nothing to compensate: the call is {call.status}")
        return f"skipped ({call.status})"
    arguments = call.resolved_arguments or call.arguments
    attempt = _invoke(w, call, tool,
                      lambda ctx: tool.spec.run_compensate(ctx, arguments, call.result),
                      f"{call.idempotency_key}:compensate")
    if attempt.ok:
        transition_call(conn, call.subject, S.COMPENSATING, S.COMPENSATED,
                        {"decided_at": now()}, {"attempts": row.attempts + 1})
        _done(conn, row.id)
        return S.COMPENSATED
    retry = attempt.transient or attempt.error is None
    if retry and row.attempts + 1 < w.settings.task_max_attempts:
        _later(conn, row.id, _backoff(w, row.attempts), _message(attempt))
        return "retry later"
    transition_call(conn, call.subject, S.COMPENSATING, S.COMPENSATION_FAILED,
                    {"error": attempt.error, "decided_at": now()},
                    {"attempts": row.attempts + 1, "error": attempt.error})
    _done(conn, row.id, _message(attempt))
    return S.COMPENSATION_FAILED

"""The only writer of call and turn statuses.

Every status change goes through ``transition_call``, ``transition_calls`` or
``transition_turn`` (and ``create_row`` for a new call or turn): they check the transition table
(``gateway.ledger.states``), compare-and-set the row (``WHERE status = :from``) so two writers
can never both win, and append the audit event (``gateway.ledger.audit``) in the same
statement, so a change and its event are one fact even in autocommit.

The same statement checks the owner's fencing token: a gateway writes for a session it owns
inside ``fenced(session_id, epoch)``, with the epoch it claimed the session under, and the
append refuses the write if the session has passed to another gateway since (``Fenced``, 409).
Writers that are not the owner (the tool worker, an operator's action outside a request)
write unfenced; their compare-and-set still keeps them from overtaking anyone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import JSONB

from gateway.db import driver
from gateway.errors import Conflict
from gateway.ledger import models
from gateway.ledger.audit import Subject, canonical
from gateway.ledger.states import call_move_allowed, turn_move_allowed

LedgerConn = Connection | psycopg.Connection[Any]


class StaleTransition(Conflict):
    """The row was not in the expected status: another writer got there first (a concurrent
    request, the reaper, or another gateway that took the session over). Answered 409
    ``stale_state``: the client reads the turn again."""

    code = "stale_state"


class Fenced(Conflict):
    """The session passed to another gateway (this one was paused, cut off or slow past its
    lease) while this one was writing: the write was refused whole. The client retries, and the
    retry reaches the session's owner."""

    code = "ownership_lost"
    final = False


FENCED_SQLSTATE = "SGF01"  # raised by specgate_append_events (migration 0006)

_FENCE: ContextVar[tuple[str, int] | None] = ContextVar("specgate_fence", default=None)


@contextmanager
def fenced(session_id: str, epoch: int) -> Iterator[None]:
    """Write the session's changes made inside as its owner under ``epoch``."""
    token = _FENCE.set((session_id, epoch))
    try:
        yield
    finally:
        _FENCE.reset(token)


def _epoch(session_id: str) -> int | None:
    fence = _FENCE.get()
    return fence[1] if fence is not None and fence[0] == session_id else None


def _fenced(session_id: str) -> Fenced:
    return Fenced(f"session {session_id!r} passed to another gateway during this request, "
                  "which changed nothing from that point on; retry it", session_id=session_id)


@contextmanager
def _refused_when_fenced(session_id: str) -> Iterator[None]:
    """Turn the append's refusal of a stale epoch into ``Fenced``."""
    try:
        yield
    except psycopg.Error as error:
        if error.sqlstate == FENCED_SQLSTATE:
            raise _fenced(session_id) from error
        raise


class IllegalTransition(Exception):
    """A move the transition table does not allow: a bug in the caller."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Move:
    """One transition to record: ``source`` is None for the creation of a call or turn."""

    subject: Subject
    source: str | None
    target: str
    detail: Mapping[str, Any] | None = None


def _events(moves: Sequence[Move]) -> list[dict[str, Any]]:
    """The events of one session's moves, as ``specgate_append_events`` takes them."""
    events = []
    for move in moves:
        at, detail = now(), dict(move.detail or {})
        subject = move.subject
        if subject.session_id != moves[0].subject.session_id:
            raise IllegalTransition("one append records the moves of one session")
        events.append({
            "turn_id": subject.turn_id,
            "call_id": subject.call_id, "entity": "turn" if subject.call_id is None else "call",
            "from": move.source, "to": move.target, "at": at.isoformat(), "detail": detail,
            "payload": canonical(subject, move.source, move.target, at, detail),
        })
    return events


_APPEND_SQL = "SELECT specgate_append_events(%(session)s, %(epoch)s, %(events)s) FROM changed"


def _append_params(moves: Sequence[Move]) -> dict[str, Any]:
    session_id = moves[0].subject.session_id
    return {"session": session_id, "epoch": _epoch(session_id),
            "events": Jsonb(_events(moves), dumps=dumps)}


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _adapt(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for the driver: JSONB columns wrapped (a JSON ``null`` stays SQL NULL)."""
    jsonb = _jsonb_columns(table)
    return {
        key: Jsonb(value, dumps=dumps) if value is not None and key in jsonb else value
        for key, value in values.items()
    }


@lru_cache(maxsize=64)
def _jsonb_columns(table: Table) -> frozenset[str]:
    return frozenset(c.key for c in table.c if isinstance(c.type, JSONB))


@lru_cache(maxsize=256)
def _insert_sql(table_name: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    params = ", ".join(f"%({c})s" for c in columns)
    return (f"WITH changed AS (INSERT INTO {table_name} ({names}) VALUES ({params}) "
            f"RETURNING id) {_APPEND_SQL}")


@lru_cache(maxsize=256)
def _update_sql(table_name: str, columns: tuple[str, ...]) -> str:
    sets = "".join(f", {c} = %({c})s" for c in columns)
    return (f"WITH changed AS (UPDATE {table_name} SET status = %(target)s{sets} "
            f"WHERE id = %(row_id)s AND status = %(source)s RETURNING id) {_APPEND_SQL}")


_BATCH: ContextVar[list[tuple[str, str, psycopg.Cursor[Any]]] | None] = ContextVar(
    "specgate_ledger_batch", default=None)


@contextmanager
def batched(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Send the state changes made inside in one pipeline (one round trip, not one each);
    their compare-and-set checks run when the block ends and raise ``StaleTransition``, so use
    it inside a transaction that the exception rolls back."""
    pending: list[tuple[str, str, psycopg.Cursor[Any]]] = []
    token = _BATCH.set(pending)
    try:
        with conn.pipeline():
            yield
    except psycopg.Error as error:  # the pipeline raises the first error when it syncs
        if error.sqlstate == FENCED_SQLSTATE and pending:
            raise _fenced(pending[0][1]) from error
        raise
    finally:
        _BATCH.reset(token)
    for what, _session, cursor in pending:
        if cursor.fetchone() is None:
            raise StaleTransition(f"{what} changed meanwhile")


def _run(conn: LedgerConn, sql: str, params: dict[str, Any], moves: Sequence[Move],
         what: str = "row") -> bool:
    """Run a data-changing statement and, only if it changed a row, append the moves' events:
    one statement, so it is atomic even in autocommit. The hot path of every call, so it goes
    to the driver directly (prepared after a few uses) instead of building a Core statement.
    Inside ``batched`` the check is deferred to the end of the batch."""
    session_id = moves[0].subject.session_id
    with _refused_when_fenced(session_id):
        cursor = driver(conn).execute(sql, {**params, **_append_params(moves)})
    pending = _BATCH.get()
    if pending is not None:
        pending.append((what, session_id, cursor))
        return True
    return cursor.fetchone() is not None


def create_row(conn: LedgerConn, model: type[models.Base], values: Mapping[str, Any],
               moves: Sequence[Move]) -> None:
    """Insert a call or turn row together with its first events."""
    table = models.table_of(model)
    columns = tuple(sorted(values))
    _run(conn, _insert_sql(table.name, columns), _adapt(table, values), moves)


def _check(move: Move, allowed: bool) -> None:
    if not allowed:
        raise IllegalTransition(
            f"{move.subject.call_id or move.subject.turn_id!r}: {move.source!r} → "
            f"{move.target!r} not allowed"
        )


def _transition(conn: LedgerConn, model: type[models.Base], row_id: str | None, move: Move,
                values: Mapping[str, Any] | None) -> bool:
    table = models.table_of(model)
    values = dict(values or {})
    params = {**_adapt(table, values), "target": move.target, "source": move.source,
              "row_id": row_id}
    sql = _update_sql(table.name, tuple(sorted(values)))
    return _run(conn, sql, params, [move],
                what=f"{table.name} {row_id!r} ({move.source} → {move.target})")


def update_in_status(conn: LedgerConn, model: type[models.Base], row_id: str, move: Move,
                     values: Mapping[str, Any]) -> None:
    """Change columns of a call or turn that is still in ``move.source`` (compare-and-set),
    appending the move's event: for an operator's change that keeps the status (e.g. a TTL
    extended, ``source == target``). Raises ``StaleTransition`` if the row has moved on."""
    if not _transition(conn, model, row_id, move, values):
        raise StaleTransition(f"{row_id!r} is no longer {move.source!r}")


def transition_call(conn: LedgerConn, subject: Subject, source: str, target: str,
                    values: Mapping[str, Any] | None = None,
                    detail: Mapping[str, Any] | None = None) -> None:
    """Move one call ``source → target`` (compare-and-set) and append its audit event."""
    move = Move(subject, source, target, detail)
    _check(move, call_move_allowed(source, target))
    if not _transition(conn, models.Call, subject.call_id, move, values):
        raise StaleTransition(f"call {subject.call_id!r} is no longer {source!r}")


_BULK_SQL = """
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s) AS v(
        id text, source text, target text, decided_at timestamptz, finished_at timestamptz,
        result jsonb, set_result boolean, error jsonb, set_error boolean,
        resolved_arguments jsonb, set_resolved boolean)
), changed AS (
    UPDATE calls c SET status = v.target, decided_at = v.decided_at,
           finished_at = COALESCE(v.finished_at, c.finished_at),
           result = CASE WHEN v.set_result THEN v.result ELSE c.result END,
           error = CASE WHEN v.set_error THEN v.error ELSE c.error END,
           resolved_arguments = CASE WHEN v.set_resolved THEN v.resolved_arguments
                                     ELSE c.resolved_arguments END
      FROM v WHERE c.id = v.id AND c.status = v.source
    RETURNING c.id)
SELECT (SELECT count(*) FROM changed) AS moved,
       specgate_append_events(%(session)s, %(epoch)s, %(events)s)
"""


_BULK_FIELDS = ("result", "error", "resolved_arguments")


@dataclass(frozen=True, slots=True)
class CallMove:
    subject: Subject
    source: str
    target: str
    values: Mapping[str, Any]  # decided_at, finished_at, result, error, resolved_arguments


def transition_calls(conn: LedgerConn, moves: Sequence[CallMove]) -> None:
    """Move many calls of one session in one statement, with one append of all their events
    (the decision of a turn). Raises ``StaleTransition`` if any call was not in its expected
    status — call it inside a transaction, which the exception then rolls back."""
    if not moves:
        return
    rows = []
    for move in moves:
        _check(Move(move.subject, move.source, move.target), call_move_allowed(move.source,
                                                                               move.target))
        row: dict[str, Any] = {"id": move.subject.call_id, "source": move.source,
                               "target": move.target,
               "decided_at": _iso(move.values.get("decided_at")),
               "finished_at": _iso(move.values.get("finished_at"))}
        for name in _BULK_FIELDS:
            row[f"set_{name.split('_')[0]}"] = name in move.values
            row[name] = move.values.get(name)
        rows.append(row)
    appended = _append_params([Move(m.subject, m.source, m.target) for m in moves])
    with _refused_when_fenced(str(appended["session"])):
        moved = driver(conn).execute(_BULK_SQL, {"rows": Jsonb(rows, dumps=dumps),
                                                 **appended}).fetchone()
    if moved is None or moved[0] != len(moves):
        raise StaleTransition(f"{len(moves) - (moved[0] if moved else 0)} of {len(moves)} calls "
                              "changed meanwhile")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def transition_turn(conn: LedgerConn, subject: Subject, source: str, target: str,
                    values: Mapping[str, Any] | None = None,
                    detail: Mapping[str, Any] | None = None) -> None:
    move = Move(subject, source, target, detail)
    _check(move, turn_move_allowed(source, target))
    if not _transition(conn, models.Turn, subject.turn_id, move, values):
        raise StaleTransition(f"turn {subject.turn_id!r} is no longer {source!r}")

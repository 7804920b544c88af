"""Typed snapshots of ledger rows: a call (``CallRow``), a turn (``TurnRow``), and a turn with
its calls (``TurnScope``), with their loaders.

These are what the call and turn services work on. A ``TurnScope`` is read under the session
lock at the start of a request (``gateway.sessions.scope``) and kept in step with the ledger by
the services as they write, so one request never reads the same rows twice. The statuses
themselves and their transition table are in ``gateway.ledger.states``; only
``gateway.ledger.transitions`` writes them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select

from gateway.db import driver
from gateway.errors import NotFound
from gateway.ledger import models
from gateway.ledger.audit import Subject
from gateway.ledger.states import LIVE_CALL_STATUSES, RESULT_STATUSES, CallStatus


def _columns(cls: type, row: Row[Any]) -> dict[str, Any]:
    """The row's values for the dataclass's fields (a row may carry more columns)."""
    mapping = row._mapping
    return {f.name: mapping[f.name] for f in fields(cls)}


@dataclass
class CallRow:
    id: str
    tenant: str
    session_id: str
    turn_id: str
    seq: int
    client_call_id: str
    tool: str
    effect: str
    runner: str
    requires_approval: bool
    arguments: dict[str, Any]
    resolved_arguments: dict[str, Any] | None
    depends_on: list[str]
    supersedes_id: str | None
    status: str
    result: Any
    error: dict[str, Any] | None
    idempotency_key: str
    replays: int
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    decided_at: datetime | None = None
    expires_at: datetime | None = None
    confirm_token_hash: str | None = None
    confirm_digest: str | None = None
    approval_expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> CallRow:
        return cls(**_columns(cls, row))

    @property
    def subject(self) -> Subject:
        return Subject(self.tenant, self.session_id, self.turn_id, self.id)

    @property
    def live(self) -> bool:
        return self.status in LIVE_CALL_STATUSES

    @property
    def has_result(self) -> bool:
        return self.status in RESULT_STATUSES or self.status == CallStatus.COMMITTED


@dataclass
class TurnRow:
    id: str
    session_id: str
    tenant: str
    seq: int
    status: str
    opened_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    error: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> TurnRow:
        return cls(**_columns(cls, row))

    @property
    def subject(self) -> Subject:
        return Subject(self.tenant, self.session_id, self.id)


@dataclass
class TurnScope:
    turn: TurnRow
    calls: list[CallRow] = field(default_factory=list)

    def by_id(self, call_id: str) -> CallRow:
        return next(c for c in self.calls if c.id == call_id)

    def live_by_client(self) -> dict[str, CallRow]:
        return {c.client_call_id: c for c in self.calls if c.live}

    def client_ids(self) -> dict[str, str]:
        return {c.id: c.client_call_id for c in self.calls}

    def next_seq(self) -> int:
        return max((c.seq for c in self.calls), default=0) + 1

    def results_for(self, call: CallRow) -> dict[str, Any]:
        """The results a call's placeholders may name, keyed by the dependency's client id."""
        deps = (self.by_id(d) for d in call.depends_on)
        return {d.client_call_id: d.result for d in deps if d.has_result}

    def results_for_commit(self, call: CallRow) -> dict[str, Any]:
        """At commit, staged dependencies have run (in issue order) and carry their result."""
        deps = (self.by_id(d) for d in call.depends_on)
        return {d.client_call_id: d.result for d in deps
                if d.has_result or (d.status == CallStatus.STAGED and d.error is None)}


def find_call(conn: Connection, call_id: str,
              tenants: Collection[str] | None = None) -> CallRow | None:
    """A call by id (of one of ``tenants`` when given), or None."""
    table = models.table_of(models.Call)
    query = select(table).where(table.c.id == call_id)
    if tenants is not None:
        query = query.where(table.c.tenant.in_(list(tenants)))
    row = conn.execute(query).first()
    return None if row is None else CallRow.from_row(row)


def load_call(conn: Connection, call_id: str, tenants: Collection[str]) -> CallRow:
    """A call of one of ``tenants``, or 404 (another tenant's call does not exist for them)."""
    call = find_call(conn, call_id, tenants)
    if call is None:
        raise NotFound(f"call {call_id!r} not found")
    return call


def _select(cls: type, table: str) -> str:
    return f"SELECT {', '.join(f.name for f in fields(cls))} FROM {table}"


# Read whenever a turn opens or a session's scope is not cached, so straight to the driver, as
# the ledger's hot writes are: building and compiling a Core statement costs several times the
# query itself.
_CALLS_OF_TURN = _select(CallRow, "calls") + " WHERE turn_id = %s ORDER BY seq"
_LATEST_TURN = (_select(TurnRow, "turns") + " WHERE session_id = %(session)s AND tenant = "
                "%(tenant)s ORDER BY seq DESC LIMIT 1")
_TURN = (_select(TurnRow, "turns") + " WHERE session_id = %(session)s AND tenant = %(tenant)s "
         "AND id = %(turn)s")


def load_calls(conn: Connection, turn_id: str) -> list[CallRow]:
    rows = driver(conn).execute(_CALLS_OF_TURN, [turn_id]).fetchall()
    return [CallRow(*row) for row in rows]


def load_turn(conn: Connection, tenant: str, session_id: str, turn_id: str | None) -> TurnRow:
    """A turn of a session of this tenant (the latest when ``turn_id`` is None), or 404."""
    row = driver(conn).execute(_LATEST_TURN if turn_id is None else _TURN,
                               {"session": session_id, "tenant": tenant, "turn": turn_id}
                               ).fetchone()
    if row is None:
        what = f"turn {turn_id!r}" if turn_id else f"session {session_id!r}"
        raise NotFound(f"{what} not found")
    return TurnRow(*row)


def load_scope(conn: Connection, tenant: str, session_id: str,
               turn_id: str | None = None) -> TurnScope:
    turn = load_turn(conn, tenant, session_id, turn_id)
    return TurnScope(turn, load_calls(conn, turn.id))

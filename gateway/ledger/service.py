"""The only writer of call and turn statuses, and the hash-chained audit trail.

Every status change goes through ``transition_call`` or ``transition_turn``: they check the
transition table, compare-and-set the row (``WHERE status = :from``) so two writers can never
both win, and append one audit event in the same ledger transaction. Events are chained per
tenant: ``hash = sha256(prev_hash || canonical(event))``, computed by Postgres in the same
statement that advances the tenant's chain head, so concurrent writers serialise on one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway.ledger import models
from gateway.ledger.states import call_move_allowed, turn_move_allowed

GENESIS = "0" * 64


class StaleTransition(Exception):
    """The row was not in the expected status: another writer got there first."""


class IllegalTransition(Exception):
    """A move the transition table does not allow: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class Subject:
    """What an event is about: a turn (call_id None) or one call of it."""

    tenant: str
    session_id: str
    turn_id: str
    call_id: str | None = None


def now() -> datetime:
    return datetime.now(UTC)


def canonical(subject: Subject, source: str | None, target: str, at: datetime,
              detail: Mapping[str, Any]) -> str:
    event = {
        "at": at.astimezone(UTC).isoformat(),
        "call": subject.call_id,
        "detail": detail,
        "from": source,
        "session": subject.session_id,
        "tenant": subject.tenant,
        "to": target,
        "turn": subject.turn_id,
    }
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()


_APPEND = text(
    """
    WITH head AS (
        UPDATE audit_heads
           SET seq = seq + 1, prev_hash = hash,
               hash = encode(sha256(convert_to(hash || :payload, 'UTF8')), 'hex')
         WHERE tenant = :tenant
     RETURNING seq, hash, prev_hash
    )
    INSERT INTO call_events
        (tenant, seq, session_id, turn_id, call_id, entity, from_status, to_status, at,
         detail, prev_hash, hash)
    SELECT :tenant, head.seq, :session_id, :turn_id, :call_id, :entity, :source, :target, :at,
           CAST(:detail AS JSONB), head.prev_hash, head.hash
      FROM head
    RETURNING id
    """
)


def ensure_chain(conn: Connection, tenant: str) -> None:
    """Create the tenant's chain head once; appends then need a single statement."""
    stmt = pg_insert(models.AuditHead).values(
        tenant=tenant, seq=0, hash=GENESIS, prev_hash=GENESIS
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["tenant"]))


def append_event(conn: Connection, subject: Subject, source: str | None, target: str,
                 detail: Mapping[str, Any] | None = None, at: datetime | None = None) -> int:
    at = at or now()
    detail = dict(detail or {})
    row = conn.execute(
        _APPEND,
        {
            "tenant": subject.tenant,
            "session_id": subject.session_id,
            "turn_id": subject.turn_id,
            "call_id": subject.call_id,
            "entity": "turn" if subject.call_id is None else "call",
            "source": source,
            "target": target,
            "at": at,
            "detail": orjson.dumps(detail).decode(),
            "payload": canonical(subject, source, target, at, detail),
        },
    ).first()
    if row is None:
        raise IllegalTransition(f"no audit chain for tenant {subject.tenant!r}")
    return int(row.id)


def transition_call(conn: Connection, subject: Subject, source: str, target: str,
                    values: Mapping[str, Any] | None = None,
                    detail: Mapping[str, Any] | None = None) -> None:
    """Move one call ``source → target`` (compare-and-set) and append its audit event."""
    if not call_move_allowed(source, target):
        raise IllegalTransition(f"call {subject.call_id!r}: {source!r} → {target!r} not allowed")
    table = models.table_of(models.Call)
    result = conn.execute(
        update(table)
        .where(table.c.id == subject.call_id, table.c.status == source)
        .values(status=target, **dict(values or {}))
    )
    if result.rowcount != 1:
        raise StaleTransition(f"call {subject.call_id!r} is no longer {source!r}")
    append_event(conn, subject, source, target, detail)


def transition_turn(conn: Connection, subject: Subject, source: str, target: str,
                    values: Mapping[str, Any] | None = None,
                    detail: Mapping[str, Any] | None = None) -> None:
    if not turn_move_allowed(source, target):
        raise IllegalTransition(f"turn {subject.turn_id!r}: {source!r} → {target!r} not allowed")
    table = models.table_of(models.Turn)
    result = conn.execute(
        update(table)
        .where(table.c.id == subject.turn_id, table.c.status == source)
        .values(status=target, **dict(values or {}))
    )
    if result.rowcount != 1:
        raise StaleTransition(f"turn {subject.turn_id!r} is no longer {source!r}")
    append_event(conn, subject, source, target, detail)


def record_creation(conn: Connection, subject: Subject, status: str,
                    detail: Mapping[str, Any] | None = None) -> None:
    """The first event of a call or turn (no source status)."""
    append_event(conn, subject, None, status, detail)


def _events(conn: Connection, tenant: str) -> Iterator[Any]:
    table = models.table_of(models.CallEvent)
    yield from conn.execute(
        select(table).where(table.c.tenant == tenant).order_by(table.c.seq)
    ).yield_per(1000)


def verify_chain(conn: Connection, tenant: str) -> int:
    """Recompute the tenant's chain; returns the number of events, raises on a break."""
    expected_prev, count = GENESIS, 0
    for row in _events(conn, tenant):
        subject = Subject(row.tenant, row.session_id, row.turn_id, row.call_id)
        payload = canonical(subject, row.from_status, row.to_status, row.at, row.detail)
        digest = hashlib.sha256((expected_prev + payload).encode()).hexdigest()
        if row.prev_hash != expected_prev or row.hash != digest:
            raise ValueError(f"audit chain of {tenant!r} breaks at event seq {row.seq}")
        expected_prev, count = row.hash, count + 1
    head = conn.execute(
        select(models.AuditHead.hash).where(models.AuditHead.tenant == tenant)
    ).scalar()
    if count and head != expected_prev:
        raise ValueError(f"audit chain head of {tenant!r} does not match its last event")
    return count

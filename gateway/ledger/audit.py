"""The audit trail: every status change of a call or turn is an event, hash-chained per tenant.

``hash = sha256(prev_hash || canonical(event))``. The chain is extended by the
``specgate_append_events`` function (migration 0002) in the same statement as the status change
it records (``gateway.ledger.transitions``), under a lock of the tenant's chain head, so an event
exists exactly when its change does. ``verify_chain`` recomputes a tenant's chain from the stored
events and names the first event where it breaks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway.ledger import models

GENESIS = "0" * 64



@dataclass(frozen=True, slots=True)
class Subject:
    """What an event is about: a turn (call_id None) or one call of it."""

    tenant: str
    session_id: str
    turn_id: str
    call_id: str | None = None


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


def ensure_chain(conn: Connection, tenant: str) -> None:
    """Create the tenant's chain head once (appends lock and advance it)."""
    stmt = pg_insert(models.AuditHead).values(
        tenant=tenant, seq=0, hash=GENESIS, prev_hash=GENESIS
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["tenant"]))


def _stored_events(conn: Connection, tenant: str) -> Iterator[Any]:
    table = models.table_of(models.CallEvent)
    yield from conn.execute(
        select(table).where(table.c.tenant == tenant).order_by(table.c.seq)
    ).yield_per(1000)


def verify_chain(conn: Connection, tenant: str) -> int:
    """Recompute the tenant's chain; returns the number of events, raises on a break."""
    expected_prev, count = GENESIS, 0
    for row in _stored_events(conn, tenant):
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

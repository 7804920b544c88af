"""The audit trail: every status change of a call or turn is an event, hash-chained per session.

``hash = sha256(prev_hash || canonical(event))``. The chain is extended by the
``specgate_append_events`` function (migration 0006) in the same statement as the status change
it records (``gateway.ledger.transitions``), under a lock of the session's row, which holds the
chain's head: an event exists exactly when its change does, and sessions never queue on a row
they share (one chain per tenant made every gateway wait on one row). ``verify_chain``
recomputes every chain of a tenant from the stored events and names the first event where one
breaks.

What the chain shows: an event edited, inserted or removed inside a session's history, or
events cut from its end. What it cannot show, per session as per tenant before it: someone with
write access to the database who rewrites a chain from the point of the change onwards, or
deletes a session with all its events. Against that, copy the heads
(``sessions.audit_seq``, ``audit_hash``) somewhere the database's writers cannot reach.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select

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


def verify_chain(conn: Connection, tenant: str) -> int:
    """Recompute every session chain of the tenant in one pass over its events; returns their
    number, raises ``ValueError`` naming the first event where a chain breaks, a chain whose
    head does not match its last event, or events whose session row is gone."""
    sessions = models.table_of(models.Session)
    events = models.table_of(models.CallEvent)
    heads = {row.id: (row.audit_seq, row.audit_hash) for row in conn.execute(
        select(sessions.c.id, sessions.c.audit_seq, sessions.c.audit_hash)
        .where(sessions.c.tenant == tenant))}
    chains: dict[str, tuple[int, str]] = {}  # session id → (events so far, last hash)
    for row in conn.execute(select(events).where(events.c.tenant == tenant)
                            .order_by(events.c.session_id, events.c.seq)).yield_per(1000):
        if row.session_id not in heads:
            raise ValueError(f"audit events of session {row.session_id!r} remain but the "
                             "session is gone")
        count, expected_prev = chains.get(row.session_id, (0, GENESIS))
        subject = Subject(row.tenant, row.session_id, row.turn_id, row.call_id)
        payload = canonical(subject, row.from_status, row.to_status, row.at, row.detail)
        digest = hashlib.sha256((expected_prev + payload).encode()).hexdigest()
        if row.seq != count + 1 or row.prev_hash != expected_prev or row.hash != digest:
            raise ValueError(f"audit chain of session {row.session_id!r} breaks at event seq "
                             f"{row.seq}")
        chains[row.session_id] = (count + 1, row.hash)
    for session_id, head in heads.items():
        if chains.get(session_id, (0, GENESIS)) != head:
            raise ValueError(f"audit chain head of session {session_id!r} does not match its "
                             "last event")
    return sum(count for count, _ in chains.values())

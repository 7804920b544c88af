"""Transcript chunks of a session: the agent worker appends what it heard (partial and final
chunks, each with the time it was heard), and the dashboard draws them on the timeline.

Chunks are observations, not decisions: they are not part of the audit chain, and a session
that has none simply shows its calls alone.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import Connection, insert, select

from gateway.admin.schemas import NewTranscriptChunk, TranscriptChunkView
from gateway.errors import NotFound
from gateway.ledger import models
from gateway.ledger.transitions import now
from gateway.runtime import Runtime

CHUNKS = models.table_of(models.TranscriptChunk)
TURNS = models.table_of(models.Turn)
SESSIONS = models.table_of(models.Session)


def _turn_of(conn: Connection, tenant: str, session_id: str, turn_id: str | None) -> str:
    query = select(TURNS.c.id).where(TURNS.c.session_id == session_id, TURNS.c.tenant == tenant)
    if turn_id is not None:
        query = query.where(TURNS.c.id == turn_id)
    found = conn.execute(query.order_by(TURNS.c.seq.desc()).limit(1)).scalar()
    if found is None:
        raise NotFound(f"turn {turn_id!r} not found" if turn_id
                       else f"session {session_id!r} not found")
    return str(found)


def append(rt: Runtime, tenant: str, session_id: str,
           chunk: NewTranscriptChunk) -> TranscriptChunkView:
    at = chunk.at or now()
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    with rt.dbs.ledger.begin() as conn:
        turn_id = _turn_of(conn, tenant, session_id, chunk.turn_id)
        row = conn.execute(insert(CHUNKS).values(
            tenant=tenant, session_id=session_id, turn_id=turn_id, text=chunk.text,
            final=chunk.final, at=at).returning(CHUNKS)).one()
    return TranscriptChunkView.model_validate(row, from_attributes=True)


def chunks(rt: Runtime, tenant: str, session_id: str) -> list[TranscriptChunkView]:
    with rt.dbs.ledger.connect() as conn:
        if conn.execute(select(SESSIONS.c.id).where(
                SESSIONS.c.id == session_id, SESSIONS.c.tenant == tenant)).first() is None:
            raise NotFound(f"session {session_id!r} not found")
        rows = conn.execute(select(CHUNKS).where(CHUNKS.c.session_id == session_id)
                            .order_by(CHUNKS.c.at, CHUNKS.c.id))
        return [TranscriptChunkView.model_validate(r, from_attributes=True) for r in rows]

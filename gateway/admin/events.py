"""The tenant-wide event stream of the dashboard (``GET /v1/admin/events``).

It polls the audit trail (``call_events``) the way the per-session stream does, plus the
transcript chunks, for every session of the tenants the key sees (or one session). The event
id is ``<last call event id>.<last transcript chunk id>``, so a client reconnecting with
``Last-Event-ID`` misses nothing; a new client starts at the present (the page it loaded
already shows the past).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from gateway.admin.redact import redact
from gateway.errors import BadRequest
from gateway.events.service import BATCH, EVENTS, events_after
from gateway.ledger import models
from gateway.runtime import Runtime

POLL_S = 0.25
CHUNKS = models.table_of(models.TranscriptChunk)


@dataclass
class Cursor:
    event: int
    chunk: int

    def __str__(self) -> str:
        return f"{self.event}.{self.chunk}"


def parse_cursor(value: str | None) -> Cursor | None:
    if value is None:
        return None
    event, _, chunk = value.partition(".")
    if not event.isdigit() or (chunk and not chunk.isdigit()):
        raise BadRequest(f"Last-Event-ID must look like '123.45', got {value!r}")
    return Cursor(int(event), int(chunk or 0))


def present(rt: Runtime) -> Cursor:
    with rt.dbs.ledger.connect() as conn:
        event = conn.execute(select(func.max(EVENTS.c.id))).scalar() or 0
        chunk = conn.execute(select(func.max(CHUNKS.c.id))).scalar() or 0
    return Cursor(int(event), int(chunk))


def fetch(rt: Runtime, tenants: list[str], session: str | None,
          cursor: Cursor) -> list[dict[str, Any]]:
    events = events_after(cursor.event, session_id=session, tenants=tenants)
    chunks = (select(CHUNKS).where(CHUNKS.c.tenant.in_(tenants), CHUNKS.c.id > cursor.chunk)
              .order_by(CHUNKS.c.id).limit(BATCH))
    if session is not None:
        chunks = chunks.where(CHUNKS.c.session_id == session)
    with rt.dbs.ledger.connect() as conn:
        found = [{"kind": r.entity, "event_id": r.id, "session_id": r.session_id,
                  "turn_id": r.turn_id, "call_id": r.call_id,
                  "client_call_id": r.client_call_id, "tool": r.tool, "from": r.from_status,
                  "to": r.to_status, "at": r.at.isoformat(), "detail": redact(r.detail)}
                 for r in conn.execute(events)]
        found += [{"kind": "transcript", "chunk_id": r.id, "session_id": r.session_id,
                   "turn_id": r.turn_id, "text": r.text, "final": r.final,
                   "at": r.at.isoformat()}
                  for r in conn.execute(chunks)]
    return found


async def stream(rt: Runtime, request: Request, tenants: list[str], session: str | None,
                 cursor: Cursor | None) -> AsyncIterator[dict[str, str]]:
    if cursor is None:
        cursor = await run_in_threadpool(present, rt)
        yield {"event": "ready", "id": str(cursor), "data": "{}"}
    while not await request.is_disconnected():
        batch = await run_in_threadpool(fetch, rt, tenants, session, cursor)
        for item in batch:
            if item["kind"] == "transcript":
                cursor.chunk = max(cursor.chunk, item["chunk_id"])
            else:
                cursor.event = max(cursor.event, item["event_id"])
            yield {"id": str(cursor), "event": item["kind"],
                   "data": orjson.dumps(item).decode()}
        if len(batch) < BATCH:
            await asyncio.sleep(POLL_S)

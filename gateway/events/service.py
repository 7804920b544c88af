"""Server-sent events of a session, read from the audit trail.

The stream polls ``call_events`` by id, so it shows transitions written by any process (a
reconciler in another gateway included) in commit order of their ids, and a client that
reconnects with ``Last-Event-ID`` misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

import orjson
from sqlalchemy import Select, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from gateway.errors import BadRequest
from gateway.ledger import models
from gateway.runtime import Runtime
from gateway.sessions import service as sessions_service

POLL_S = 0.2
BATCH = 500


async def check_session(rt: Runtime, tenant: str, session_id: str) -> None:
    await run_in_threadpool(sessions_service.check_session, rt, tenant, session_id)


def parse_last_event_id(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit():
        raise BadRequest(f"Last-Event-ID must be an event id, got {value!r}")
    return int(value)


EVENTS, CALLS = models.table_of(models.CallEvent), models.table_of(models.Call)


def events_after(after: int, *, session_id: str | None = None,
                 tenants: Collection[str] | None = None) -> Select[Any]:
    """The next batch of audit events after id ``after`` (of one session, or of ``tenants``),
    each with its call's client id and tool, in id order."""
    query = (select(EVENTS, CALLS.c.client_call_id, CALLS.c.tool)
             .outerjoin(CALLS, CALLS.c.id == EVENTS.c.call_id)
             .where(EVENTS.c.id > after).order_by(EVENTS.c.id).limit(BATCH))
    if session_id is not None:
        query = query.where(EVENTS.c.session_id == session_id)
    if tenants is not None:
        query = query.where(EVENTS.c.tenant.in_(list(tenants)))
    return query


def fetch(rt: Runtime, session_id: str, after: int) -> list[dict[str, Any]]:
    query = events_after(after, session_id=session_id)
    with rt.dbs.ledger.connect() as conn:
        return [
            {"id": r.id, "entity": r.entity, "session_id": r.session_id, "turn_id": r.turn_id,
             "call_id": r.call_id, "client_call_id": r.client_call_id, "tool": r.tool,
             "from": r.from_status, "to": r.to_status, "at": r.at.isoformat(),
             "detail": r.detail}
            for r in conn.execute(query)
        ]


async def stream(rt: Runtime, request: Request, session_id: str,
                 after: int) -> AsyncIterator[dict[str, str]]:
    while not await request.is_disconnected():
        batch = await run_in_threadpool(fetch, rt, session_id, after)
        for event in batch:
            after = event["id"]
            yield {"id": str(event["id"]), "event": event["entity"],
                   "data": orjson.dumps(event).decode()}
        if len(batch) < BATCH:
            await asyncio.sleep(POLL_S)

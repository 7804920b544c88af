"""Routes of the admin dashboard: the operator API under ``/v1/admin`` (admin keys only), the
transcript of a session (written by the agent worker), and the pages under ``/admin``.

``router`` bundles them, so the app includes this module like any other domain.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.admin import actions, events, health, pages, queue, timeline, transcript
from gateway.admin.dependencies import QueueFilterDep, Tenants, ValidCall, visible_tenants
from gateway.admin.schemas import (
    ExtendTtl,
    Me,
    NewTranscriptChunk,
    QueuePage,
    TranscriptChunkView,
    TtlView,
)
from gateway.calls.schemas import CallView
from gateway.calls.views import call_view
from gateway.deps import AdminKey, CurrentKey, IdempotentDep, RuntimeDep
from gateway.errors import NotFound
from gateway.sessions import service as sessions_service

api = APIRouter(prefix="/v1/admin", tags=["admin"])
sessions = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@api.get("/me", response_model=Me)
async def me(key: AdminKey) -> Me:
    """Who this admin key is, and which tenants' data it sees (the dashboard's login check)."""
    return Me(key_id=key.key_id, tenant=key.tenant, role=key.role,
              tenants=visible_tenants(key))


@api.get("/queue", response_model=QueuePage)
def get_queue(rt: RuntimeDep, tenants: Tenants, f: QueueFilterDep) -> QueuePage:
    """Pending work, newest first. Filters: `status` (`pending` by default, `any`, or one
    status), `effect`, `tool`, `tenant`, `session`; `q` finds a call, session, turn or
    idempotency key by id in every status. Page on with `cursor` = `next_cursor`."""
    return queue.load_page(rt, tenants, f)


@api.get("/health")
def get_health(rt: RuntimeDep, tenants: Tenants) -> dict[str, Any]:
    """Held transactions, prepared transactions, outbox backlog, heartbeats, speculation."""
    return health.health(rt, tenants)


@api.get("/sessions/{session_id}/timeline")
def get_timeline(session_id: str, rt: RuntimeDep, tenants: Tenants) -> dict[str, Any]:
    """A session's transcript chunks, turns, calls and every transition, in time order."""
    with rt.dbs.ledger.connect() as conn:
        return timeline.session_timeline(conn, tenants, session_id)


@api.get("/events")
async def admin_events(request: Request, rt: RuntimeDep, tenants: Tenants,
                       session: str | None = None) -> EventSourceResponse:
    """Server-sent events of every call and turn transition and transcript chunk of the
    tenant (or of one `session`), from now on; `Last-Event-ID` resumes."""
    if session is not None:
        await run_in_threadpool(_check_session, rt, tenants, session)
    cursor = events.parse_cursor(request.headers.get("last-event-id"))
    return EventSourceResponse(events.stream(rt, request, tenants, session, cursor))


def _check_session(rt: Any, tenants: list[str], session_id: str) -> None:
    for tenant in tenants:
        try:
            sessions_service.check_session(rt, tenant, session_id)
            return
        except NotFound:
            continue
    raise NotFound(f"session {session_id!r} not found")


@api.post("/calls/{call_id}/retry-compensation", response_model=CallView)
def retry_compensation(call: ValidCall, rt: RuntimeDep, key: AdminKey,
                       idem: IdempotentDep) -> Response:
    """Run the compensation of a call again after it failed (`compensation_failed →
    compensating`, a new outbox row for the tool worker)."""

    def handler() -> tuple[int, object]:
        done = actions.retry_compensation(rt, key, call)
        return 200, call_view(done, {}).model_dump(mode="json")

    return idem.run(handler)


@api.post("/calls/{call_id}/extend-ttl", response_model=TtlView)
def extend_call_ttl(call: ValidCall, body: ExtendTtl, rt: RuntimeDep, key: AdminKey,
                    idem: IdempotentDep) -> Response:
    """Push back the expiry of a staged call, or of an approval a call is waiting for."""
    return idem.run(lambda: (200, actions.extend_call(rt, key, call, body.seconds)
                             .model_dump(mode="json")))


@api.post("/turns/{turn_id}/extend-ttl", response_model=TtlView)
def extend_turn_ttl(turn_id: str, body: ExtendTtl, rt: RuntimeDep, key: AdminKey,
                    tenants: Tenants, idem: IdempotentDep) -> Response:
    """Push back the expiry of an open turn (and keep its held transaction alive as long)."""
    return idem.run(lambda: (200, actions.extend_turn(rt, key, tenants, turn_id, body.seconds)
                             .model_dump(mode="json")))


@sessions.post("/{session_id}/transcript", status_code=201,
               response_model=TranscriptChunkView)
def append_transcript(session_id: str, body: NewTranscriptChunk, rt: RuntimeDep,
                      key: CurrentKey, idem: IdempotentDep) -> Response:
    """Append a chunk of what the user said (the agent worker does, partial and final)."""
    return idem.run(lambda: (201, transcript.append(rt, key.tenant, session_id, body)
                             .model_dump(mode="json")))


@sessions.get("/{session_id}/transcript", response_model=list[TranscriptChunkView])
def list_transcript(session_id: str, rt: RuntimeDep,
                    key: CurrentKey) -> list[TranscriptChunkView]:
    return transcript.chunks(rt, key.tenant, session_id)


router = APIRouter()
for _part in (api, sessions, pages.router):
    router.include_router(_part)

"""Routes of sessions, their turns, and issuing calls into the open turn."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from gateway.calls.schemas import CallView, IssueCall
from gateway.deps import CurrentKey, IdempotentDep, RuntimeDep
from gateway.events import service as events_service
from gateway.sessions import service
from gateway.sessions.schemas import CancelTurn, CommitTurn, CreateSession, SessionView, TurnView
from gateway.sessions.scope import scope_of
from gateway.sessions.views import session_view, turn_view
from gateway.turns import commit
from gateway.turns import service as turns_service

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
Wait = Annotated[float, Query(ge=0, le=300, description="Seconds to wait for a settled call.")]


@router.post("", status_code=201, response_model=SessionView)
def create_session(body: CreateSession, rt: RuntimeDep, key: CurrentKey,
                   idem: IdempotentDep) -> Response:
    def handler() -> tuple[int, object]:
        session_id = service.create_session(rt, key.tenant, body.metadata)
        with rt.dbs.ledger.connect() as conn:
            view = session_view(conn, key.tenant, session_id)
        return 201, view.model_dump(mode="json")

    return idem.run(handler)


@router.get("/{session_id}", response_model=SessionView)
def get_session(session_id: str, rt: RuntimeDep, key: CurrentKey) -> SessionView:
    with rt.dbs.ledger.connect() as conn:
        return session_view(conn, key.tenant, session_id)


@router.post("/{session_id}/turns", status_code=201, response_model=TurnView)
def open_turn(session_id: str, rt: RuntimeDep, key: CurrentKey, idem: IdempotentDep) -> Response:
    def handler() -> tuple[int, object]:
        with scope_of(rt, key.tenant, session_id):
            scope = turns_service.open_next_turn(rt, key.tenant, session_id)
        return 201, turn_view(scope).model_dump(mode="json")

    return idem.run(handler)


@router.post("/{session_id}/calls", status_code=201, response_model=CallView)
def issue_call(session_id: str, body: IssueCall, rt: RuntimeDep, key: CurrentKey,
               idem: IdempotentDep, wait: Wait = 0) -> Response:
    """Issue a call in the open turn. `db`-runner calls settle before the response; a
    `task`-runner call is queued for the tool worker, and `wait` returns once it has settled
    (or the time is up)."""
    return idem.run(lambda: service.issue(rt, key.tenant, session_id, body, wait))


@router.post("/{session_id}/turns/{turn_id}/commit", response_model=TurnView)
def commit_turn(session_id: str, turn_id: str, rt: RuntimeDep, key: CurrentKey,
                idem: IdempotentDep, body: CommitTurn | None = None) -> Response:
    keep = body.keep_ids() if body else None

    def handler() -> tuple[int, object]:
        with scope_of(rt, key.tenant, session_id, turn_id) as scope:
            commit.commit_turn(rt, scope, keep)
            return 200, turn_view(scope).model_dump(mode="json")

    return idem.run(handler)


@router.post("/{session_id}/turns/{turn_id}/cancel", response_model=TurnView)
def cancel_turn(session_id: str, turn_id: str, rt: RuntimeDep, key: CurrentKey,
                idem: IdempotentDep, body: CancelTurn | None = None) -> Response:
    reason = body.reason if body else "cancelled by the client"

    def handler() -> tuple[int, object]:
        with scope_of(rt, key.tenant, session_id, turn_id) as scope:
            turns_service.cancel_turn(rt, scope, reason)
            return 200, turn_view(scope).model_dump(mode="json")

    return idem.run(handler)


@router.get("/{session_id}/events")
async def session_events(session_id: str, request: Request, rt: RuntimeDep,
                         key: CurrentKey) -> EventSourceResponse:
    """Server-sent events: every call and turn transition of the session, in order. Resumes
    after the `Last-Event-ID` header when given."""
    await events_service.check_session(rt, key.tenant, session_id)
    after = events_service.parse_last_event_id(request.headers.get("last-event-id"))
    return EventSourceResponse(events_service.stream(rt, request, session_id, after))

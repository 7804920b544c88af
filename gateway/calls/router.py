"""Routes of single calls: read (optionally waiting), cancel, list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import and_, or_, select
from starlette.responses import Response

from gateway.auth.service import Principal, Role
from gateway.calls import approvals, service
from gateway.calls.schemas import ApprovalDecision, CallPage, CallView, CancelCall
from gateway.calls.views import call_view
from gateway.deps import CurrentKey, Idempotent, IdempotentDep, RuntimeDep
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.ledger import models
from gateway.ledger.rows import CallRow, load_calls
from gateway.ledger.states import CallStatus, TurnStatus
from gateway.paging import decode_cursor, encode_cursor
from gateway.runtime import Runtime
from gateway.sessions.scope import scope_of

router = APIRouter(prefix="/v1/calls", tags=["calls"])
CALLS = models.table_of(models.Call)


def _load(rt: Runtime, tenant: str, call_id: str) -> tuple[CallRow, dict[str, str]]:
    with rt.dbs.ledger.connect() as conn:
        turn_id = conn.execute(select(CALLS.c.turn_id).where(
            CALLS.c.id == call_id, CALLS.c.tenant == tenant)).scalar()
        if turn_id is None:
            raise NotFound(f"call {call_id!r} not found")
        calls = load_calls(conn, turn_id)
    ids = {c.id: c.client_call_id for c in calls}
    return next(c for c in calls if c.id == call_id), ids


@router.get("/{call_id}", response_model=CallView)
def get_call(call_id: str, rt: RuntimeDep, key: CurrentKey,
             wait: Annotated[float, Query(ge=0, le=300)] = 0) -> CallView:
    call, ids = _load(rt, key.tenant, call_id)
    if wait > 0 and call.status in service.WORKER_OWNED:
        service.wait_settled(rt, [call], min(wait, rt.settings.wait_max_s))
    return call_view(call, ids)


@router.post("/{call_id}/cancel", response_model=list[CallView])
def cancel_call(call_id: str, rt: RuntimeDep, key: CurrentKey, idem: IdempotentDep,
                body: CancelCall | None = None) -> Response:
    """Cancel a live call of an open turn and, transitively, every call depending on it.
    Returns every call whose status changed (the cascade, and replays that conflicted)."""
    reason = body.reason if body else "cancelled by the client"

    def handler() -> tuple[int, object]:
        call, _ = _load(rt, key.tenant, call_id)
        with scope_of(rt, key.tenant, call.session_id, call.turn_id) as scope:
            target = scope.by_id(call_id)
            if scope.turn.status != TurnStatus.OPEN or not target.live:
                raise Conflict(f"call {call_id!r} is {target.status} in a {scope.turn.status} "
                               "turn and can no longer be cancelled", code="call_not_live")
            changed = service.cancel_calls(rt, scope, [target], reason=reason)
            ids = scope.client_ids()
            return 200, [call_view(c, ids).model_dump(mode="json")
                         for c in changed]

    return idem.run(handler)


@router.post("/{call_id}/approve", response_model=CallView)
def approve_call(call_id: str, rt: RuntimeDep, key: CurrentKey, idem: IdempotentDep,
                 body: ApprovalDecision | None = None) -> Response:
    """Approve a call awaiting approval: an admin key, or the app with the call's
    ``confirm_token``. The tool worker then runs it once."""
    return _decide(call_id, rt, key, idem, body, approve=True)


@router.post("/{call_id}/deny", response_model=CallView)
def deny_call(call_id: str, rt: RuntimeDep, key: CurrentKey, idem: IdempotentDep,
              body: ApprovalDecision | None = None) -> Response:
    """Deny a call awaiting approval (admin key, or the app with its ``confirm_token``);
    it never runs."""
    return _decide(call_id, rt, key, idem, body, approve=False)


def _decide(call_id: str, rt: Runtime, key: Principal, idem: Idempotent,
            body: ApprovalDecision | None, *, approve: bool) -> Response:
    body = body or ApprovalDecision()

    def handler() -> tuple[int, object]:
        call = approvals.decide(rt, key.tenant, call_id, approve=approve,
                                admin=key.role == Role.ADMIN, token=body.confirm_token,
                                reason=body.reason)
        return 200, call_view(call, {}).model_dump(mode="json")

    return idem.run(handler)


@router.get("", response_model=CallPage)
def list_calls(rt: RuntimeDep, key: CurrentKey, status: str | None = None,
               tool: str | None = None, session: str | None = None,
               cursor: str | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> CallPage:
    """The tenant's calls, newest first, filtered; page on with `next_cursor`."""
    if status is not None and status not in set(CallStatus):
        raise BadRequest(f"unknown status {status!r}")
    query = select(CALLS).where(CALLS.c.tenant == key.tenant)
    for column, value in ((CALLS.c.status, status), (CALLS.c.tool, tool),
                          (CALLS.c.session_id, session)):
        if value is not None:
            query = query.where(column == value)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(or_(CALLS.c.created_at < after[0], and_(
            CALLS.c.created_at == after[0], CALLS.c.id < after[1])))
    query = query.order_by(CALLS.c.created_at.desc(), CALLS.c.id.desc()).limit(limit + 1)
    with rt.dbs.ledger.connect() as conn:
        calls = [CallRow.from_row(r) for r in conn.execute(query)]
    more = len(calls) > limit
    calls = calls[:limit]
    next_cursor = None
    if more:
        last = calls[-1]
        assert last.created_at is not None
        next_cursor = encode_cursor(last.created_at, last.id)
    return CallPage(items=[call_view(c, {}) for c in calls],
                    next_cursor=next_cursor)

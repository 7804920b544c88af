"""Sessions: creating one (with its first turn), the session check, and issuing a call in the
session's open turn (the hot route, shared by its declared route and its fast path)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from gateway.calls import service as calls_service
from gateway.calls.schemas import IssueCall
from gateway.calls.views import call_view
from gateway.errors import NotFound, draining
from gateway.ledger import models
from gateway.ledger.transitions import now
from gateway.runtime import Runtime
from gateway.sessions.scope import scope_of
from gateway.turns.service import insert_turn


def issue(rt: Runtime, tenant: str, session_id: str, request: IssueCall,
          wait: float = 0) -> tuple[int, object]:
    """``POST /v1/sessions/{id}/calls`` (its declared route and its fast path): status and body."""
    with scope_of(rt, tenant, session_id) as scope:
        call, token = calls_service.issue_call(rt, scope, request)
        ids = scope.client_ids()
    if wait and call.status in calls_service.WORKER_OWNED:  # outside the session's lock
        calls_service.wait_settled(rt, [call], min(wait, rt.settings.wait_max_s))
    view = call_view(call, ids)
    view.confirm_token = token
    return 201, view.model_dump(mode="json")


def check_session(rt: Runtime, tenant: str, session_id: str) -> None:
    """404 unless the session exists and belongs to the tenant."""
    table = models.table_of(models.Session)
    with rt.dbs.ledger.connect() as conn:
        found = conn.execute(select(table.c.id).where(
            table.c.id == session_id, table.c.tenant == tenant)).first()
    if found is None:
        raise NotFound(f"session {session_id!r} not found")


def create_session(rt: Runtime, tenant: str, metadata: dict[str, Any]) -> str:
    if rt.draining:
        raise draining()
    session_id = models.new_id("ses")
    with rt.dbs.ledger.begin() as conn:
        conn.execute(insert(models.Session).values(
            id=session_id, tenant=tenant, meta=metadata, owner_id=rt.gateway_id,
            owner_seen_at=now(),
        ))
        insert_turn(conn, rt, tenant, session_id, 1)
    return session_id

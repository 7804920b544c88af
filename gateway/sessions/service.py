"""Sessions: the scope a request works in, and the read views of sessions, turns and calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, select

from gateway.calls import service as calls_service
from gateway.calls.schemas import CallView, IssueCall
from gateway.calls.state import CallState, TurnScope, TurnState, load_calls, load_scope
from gateway.errors import NotFound
from gateway.ledger import models
from gateway.runtime import Runtime
from gateway.sessions.schemas import SessionView, TurnView


@contextmanager
def scope_of(rt: Runtime, tenant: str, session_id: str,
             turn_id: str | None = None) -> Iterator[TurnScope]:
    """Own the session, take its lock and load the turn (latest when ``turn_id`` is None)."""
    previous = rt.claim(session_id, tenant)
    with rt.session_lock(session_id):
        if previous is not None:
            from gateway import recovery

            recovery.recover_session(rt, tenant, session_id)
        scope = rt.scopes.get(session_id)
        if scope is None or (turn_id is not None and scope.turn.id != turn_id):
            with rt.dbs.ledger.connect() as conn:
                scope = load_scope(conn, tenant, session_id, turn_id)
            if turn_id is None:
                rt.scopes[session_id] = scope
        else:  # the worker writes its calls behind the cache
            calls_service.refresh(rt, calls_service.unsettled(scope))
        try:
            yield scope
        except BaseException:
            rt.forget_scope(session_id)  # it may be half-updated: read it again next time
            raise


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


def call_view(call: CallState, client_ids: dict[str, str]) -> CallView:
    data = dict(vars(call))
    data["depends_on"] = [client_ids.get(d, d) for d in call.depends_on]
    data["supersedes"] = call.supersedes_id
    return CallView.model_validate(data)


def turn_view(scope: TurnScope) -> TurnView:
    ids = scope.client_ids()
    turn: TurnState = scope.turn
    return TurnView(**{k: v for k, v in vars(turn).items() if k != "tenant"},
                    calls=[call_view(c, ids) for c in scope.calls])


def session_view(conn: Connection, tenant: str, session_id: str) -> SessionView:
    sessions, turns = models.table_of(models.Session), models.table_of(models.Turn)
    row = conn.execute(select(sessions).where(
        sessions.c.id == session_id, sessions.c.tenant == tenant)).first()
    if row is None:
        raise NotFound(f"session {session_id!r} not found")
    turn_rows = conn.execute(select(turns).where(turns.c.session_id == session_id)
                             .order_by(turns.c.seq))
    views = []
    for turn_row in turn_rows:
        turn = TurnState.from_row(turn_row)
        views.append(turn_view(TurnScope(turn, load_calls(conn, turn.id))))
    return SessionView(id=row.id, created_at=row.created_at, metadata=row.metadata, turns=views)

"""Read views of sessions and turns, as the API returns them."""

from __future__ import annotations

from sqlalchemy import Connection, select

from gateway.calls.views import call_view
from gateway.errors import NotFound
from gateway.ledger import models
from gateway.ledger.rows import TurnRow, TurnScope, load_calls
from gateway.sessions.schemas import SessionView, TurnView


def turn_view(scope: TurnScope) -> TurnView:
    ids = scope.client_ids()
    turn: TurnRow = scope.turn
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
        turn = TurnRow.from_row(turn_row)
        views.append(turn_view(TurnScope(turn, load_calls(conn, turn.id))))
    return SessionView(id=row.id, created_at=row.created_at, metadata=row.metadata, turns=views)

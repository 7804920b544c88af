"""The queue of pending work: every call whose effect is still held, staged, waiting for an
approval or for the tool worker, or whose compensation failed — with what holds it.

"Pending" means: live in an open turn (``proposed``, ``running``, ``held``, ``staged``, or
``succeeded`` and not yet decided), or decided and not finished (``awaiting_approval``,
``approved``, ``dispatched``, ``compensating``, ``compensation_failed``, or ``committed`` with
an outbox row still to run). Newest first, paged by a cursor over (created_at, id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, true

from gateway.admin import health
from gateway.admin.redact import redact
from gateway.admin.schemas import Holder, QueueItem, QueuePage, Ttl
from gateway.errors import BadRequest
from gateway.ledger import models
from gateway.ledger.states import LIVE_CALL_STATUSES, CallStatus, TurnStatus
from gateway.paging import decode_cursor, encode_cursor
from gateway.runtime import Runtime

S = CallStatus
CALLS = models.table_of(models.Call)
TURNS = models.table_of(models.Turn)
SESSIONS = models.table_of(models.Session)
MARKERS = models.table_of(models.CommitMarker)
OUTBOX = models.table_of(models.OutboxMessage)

# Statuses that are pending whatever else holds (see the module docstring for the rest).
PENDING_STATUSES = (S.PROPOSED, S.RUNNING, S.HELD, S.STAGED, S.AWAITING_APPROVAL, S.APPROVED,
                    S.DISPATCHED, S.COMPENSATING, S.COMPENSATION_FAILED)
QUEUE_STATUSES = (*PENDING_STATUSES, S.SUCCEEDED, S.COMMITTED)
EFFECTS = ("safe", "reversible", "sensitive")
PENDING, ANY = "pending", "any"


@dataclass(frozen=True)
class QueueFilter:
    status: str = PENDING
    effect: str | None = None
    tool: str | None = None
    tenant: str | None = None
    session: str | None = None
    q: str | None = None
    cursor: str | None = None
    limit: int = 25

    def validate(self, tenants: list[str]) -> None:
        if self.status not in {PENDING, ANY, *CallStatus}:
            raise BadRequest(f"unknown status {self.status!r}")
        if self.effect is not None and self.effect not in EFFECTS:
            raise BadRequest(f"unknown effect class {self.effect!r}")
        if self.tenant is not None and self.tenant not in tenants:
            raise BadRequest(f"tenant {self.tenant!r} is not visible to this key")


def pending_clause() -> Any:
    outstanding = select(OUTBOX.c.call_id).where(OUTBOX.c.done_at.is_(None))
    return or_(
        CALLS.c.status.in_(PENDING_STATUSES),
        and_(CALLS.c.status == S.SUCCEEDED, CALLS.c.decided_at.is_(None)),
        and_(CALLS.c.status == S.COMMITTED, CALLS.c.id.in_(outstanding)),
    )


def _filtered(query: Select[Any], f: QueueFilter, tenants: list[str], *,
              status: bool = True) -> Select[Any]:
    query = query.where(CALLS.c.tenant.in_([f.tenant] if f.tenant else tenants))
    for column, value in ((CALLS.c.effect, f.effect), (CALLS.c.tool, f.tool),
                          (CALLS.c.session_id, f.session)):
        if value:
            query = query.where(column == value)
    if f.q:
        needle = f.q.strip()
        query = query.where(or_(CALLS.c.id == needle, CALLS.c.session_id == needle,
                                CALLS.c.turn_id == needle, CALLS.c.idempotency_key == needle))
    if not status:
        return query
    if f.status == PENDING and not f.q:  # a search looks at every status
        return query.where(pending_clause())
    if f.status not in (PENDING, ANY):
        query = query.where(CALLS.c.status == f.status)
    return query


def _rows(conn: Connection, f: QueueFilter, tenants: list[str]) -> list[Any]:
    work = (select(OUTBOX.c.id, OUTBOX.c.kind, OUTBOX.c.attempts, OUTBOX.c.sends,
                   OUTBOX.c.next_at, OUTBOX.c.last_error)
            .where(OUTBOX.c.call_id == CALLS.c.id, OUTBOX.c.done_at.is_(None))
            .order_by(OUTBOX.c.id).limit(1).lateral("work"))
    query = (
        select(CALLS, TURNS.c.seq.label("turn_seq"), TURNS.c.status.label("turn_status"),
               TURNS.c.expires_at.label("turn_expires_at"), SESSIONS.c.owner_id,
               MARKERS.c.decision, MARKERS.c.gid.label("marker_gid"),
               work.c.id.label("outbox_id"), work.c.kind.label("outbox_kind"),
               work.c.attempts.label("outbox_attempts"), work.c.sends.label("outbox_sends"),
               work.c.next_at.label("outbox_next_at"),
               work.c.last_error.label("outbox_error"))
        .join(TURNS, TURNS.c.id == CALLS.c.turn_id)
        .join(SESSIONS, SESSIONS.c.id == CALLS.c.session_id)
        .outerjoin(MARKERS, MARKERS.c.turn_id == CALLS.c.turn_id)
        .outerjoin(work, true())
    )
    query = _filtered(query, f, tenants)
    after = decode_cursor(f.cursor)
    if after is not None:
        query = query.where(or_(CALLS.c.created_at < after[0], and_(
            CALLS.c.created_at == after[0], CALLS.c.id < after[1])))
    query = query.order_by(CALLS.c.created_at.desc(), CALLS.c.id.desc()).limit(f.limit + 1)
    return list(conn.execute(query))


def counts(conn: Connection, f: QueueFilter, tenants: list[str]) -> dict[str, int]:
    """Pending calls by status under the same filters (status and paging aside)."""
    query = _filtered(select(CALLS.c.status, func.count()).group_by(CALLS.c.status), f,
                      tenants, status=False).where(pending_clause())
    found = {str(status): int(n) for status, n in conn.execute(query)}
    return {status: found[status] for status in QUEUE_STATUSES if status in found}


def load_page(rt: Runtime, tenants: list[str], f: QueueFilter) -> QueuePage:
    """A page of the queue, with the age of every prepared transaction it names (looked up on
    the databases only when a row waits in one)."""
    f.validate(tenants)
    with rt.dbs.ledger.connect() as conn:
        rows = _rows(conn, f, tenants)
        by_status = counts(conn, f, tenants)
    more = len(rows) > f.limit
    rows = rows[:f.limit]
    stamps: dict[str, datetime] = {}
    if any(_waits_prepared(r) for r in rows):
        stamps = {p["gid"]: p["prepared_at"] for p in health.prepared(rt)}
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return QueuePage(items=[item(r, stamps) for r in rows], next_cursor=cursor,
                     counts=by_status)


def item(row: Any, prepared: dict[str, datetime]) -> QueueItem:
    live = row.status in LIVE_CALL_STATUSES and row.turn_status == TurnStatus.OPEN
    arguments = row.resolved_arguments if row.resolved_arguments is not None else row.arguments
    return QueueItem(
        id=row.id, tenant=row.tenant, session_id=row.session_id, turn_id=row.turn_id,
        turn_seq=row.turn_seq, turn_status=row.turn_status, client_call_id=row.client_call_id,
        tool=row.tool, effect=row.effect, runner=row.runner, status=row.status,
        requires_approval=row.requires_approval, arguments=redact(arguments or {}),
        error=redact(row.error) if row.error else None, supersedes_id=row.supersedes_id,
        idempotency_key=row.idempotency_key, created_at=row.created_at,
        ttl=_ttl(row, live), holder=holder(row, live, prepared), actions=actions(row, live),
    )


def _ttl(row: Any, live: bool) -> Ttl | None:
    if row.status == S.AWAITING_APPROVAL and row.approval_expires_at is not None:
        return Ttl(kind="approval", expires_at=row.approval_expires_at)
    if not live:
        return None
    if row.status == S.STAGED and row.expires_at is not None \
            and row.expires_at < row.turn_expires_at:
        return Ttl(kind="staged", expires_at=row.expires_at)
    return Ttl(kind="turn", expires_at=row.turn_expires_at)


def _gids(row: Any) -> list[str]:
    return [g for g in (row.marker_gid or "").split(",") if g]


def _waits_prepared(row: Any) -> bool:
    """A ``db`` call whose turn transaction is PREPAREd until the approvals are decided."""
    return bool(_gids(row)) and row.runner == "db" and row.decision == "approval" and \
        row.status in (S.AWAITING_APPROVAL, S.APPROVED)


def holder(row: Any, live: bool, prepared: dict[str, datetime]) -> Holder:
    """What keeps this call pending: the turn's transaction, a prepared transaction, the
    tool worker (a task is the call id) with its outbox row, or an operator."""
    if row.status == S.COMPENSATION_FAILED:
        return Holder(kind="operator", label="Compensation failed",
                      detail={"note": "the effect stays until an operator retries or undoes it",
                              "error": redact(row.error)})
    if row.outbox_id is not None:
        return Holder(kind="task" if row.runner == "task" else "outbox", label="Tool worker",
                      detail={"task_id": row.id, "outbox_id": row.outbox_id,
                              "kind": row.outbox_kind, "attempts": row.outbox_attempts,
                              "sends": row.outbox_sends, "next_send_at": row.outbox_next_at,
                              "last_error": row.outbox_error})
    if _waits_prepared(row):
        gids = _gids(row)
        return Holder(kind="prepared", label="Prepared transaction",
                      detail={"gids": gids, "prepared_at": {g: prepared[g] for g in gids
                                                            if g in prepared}})
    if row.status == S.STAGED:
        return Holder(kind="staged", label="Staged",
                      detail={"note": "runs only when the turn commits"})
    if live and row.runner == "db" and row.status == S.HELD:
        return Holder(kind="turn_transaction", label="Turn transaction",
                      detail={"gateway": row.owner_id, "savepoint": f"sp_{row.id}"})
    if row.status == S.AWAITING_APPROVAL:
        return Holder(kind="operator", label="Waits for an approval",
                      detail={"note": "nothing runs until it is approved"})
    if row.runner == "task" and row.status == S.HELD:
        return Holder(kind="task", label="Effect made by the tool worker",
                      detail={"task_id": row.id,
                              "note": "its compensation undoes it if the turn drops it"})
    return Holder(kind="result", label="Result only",
                  detail={"note": "nothing held; the result waits for the turn"})


def actions(row: Any, live: bool) -> list[str]:
    found: list[str] = []
    if live:
        found += ["cancel", "commit_turn", "cancel_turn", "extend_turn"]
        if row.status == S.STAGED:
            found.append("extend_call")
    if row.status == S.AWAITING_APPROVAL and row.requires_approval:
        found += ["approve", "deny", "extend_call"]
    if row.status == S.COMPENSATION_FAILED:
        found.append("retry_compensation")
    return found

"""The ledger: the gateway's own tables (what was asked, what happened, who decided).

Alembic migrations in ``migrations/`` create these tables; this module is their single
description in code. Ids are opaque text with a readable prefix (``ses_``, ``turn_``, ``call_``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Gateway(Base):
    """A running gateway process; sessions are owned by one through a lease."""

    __tablename__ = "gateways"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    # Where other gateways forward requests for the sessions this one owns (migration 0005).
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # It holds its presence lock (gateway.presence): dead as soon as Postgres drops the lock.
    presence: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)


class WorkerHeartbeat(Base):
    """A tool worker process, touched by its housekeeping loop
    (``gateway.tasks.worker.worker_beat``); the dashboard's health panel reads it."""

    __tablename__ = "worker_heartbeats"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Session(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = _now()
    owner_id: Mapped[str | None] = mapped_column(String(64))
    owner_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # The fencing token of ownership: it grows whenever the session passes to another gateway,
    # and every ledger write of the owner carries the one it claimed under (migration 0006).
    epoch: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    # The head of the session's audit chain (gateway.ledger.audit).
    audit_seq: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    audit_hash: Mapped[str] = mapped_column(String(64), server_default="0" * 64,
                                            default="0" * 64)


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("session_id", "seq"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    opened_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gid: Mapped[str | None] = mapped_column(String(200), unique=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_turn_seq", "turn_id", "seq", unique=True),
        Index("ix_calls_tenant_status", "tenant", "status"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    client_call_id: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(200), index=True)
    effect: Mapped[str] = mapped_column(String(16))
    runner: Mapped[str] = mapped_column(String(8))
    requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    arguments: Mapped[dict[str, Any]] = mapped_column(JSONB)
    resolved_arguments: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    depends_on: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    supersedes_id: Mapped[str | None] = mapped_column(ForeignKey("calls.id"))
    status: Mapped[str] = mapped_column(String(24))
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    replays: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    confirm_token_hash: Mapped[str | None] = mapped_column(String(64))
    confirm_digest: Mapped[str | None] = mapped_column(String(64))
    approval_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CallEvent(Base):
    """One row per state transition of a call or a turn: the audit trail, hash-chained per
    session (``hash = sha256(prev_hash + canonical event)``, ``seq`` counts within the
    session)."""

    __tablename__ = "call_events"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        Index("ix_call_events_session_id_id", "session_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    session_id: Mapped[str] = mapped_column(String(64))
    turn_id: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str | None] = mapped_column(String(64), index=True)
    entity: Mapped[str] = mapped_column(String(8))
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[Any | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class CommitMarker(Base):
    """The decision record of a turn. ``commit`` is written inside the turn transaction (same
    database) or, across databases, between PREPARE and COMMIT PREPARED; the reconciler writes
    ``abort`` before rolling back a prepared transaction it found without a decision. The primary
    key makes the first decision the only one (presumed abort)."""

    __tablename__ = "commit_markers"
    turn_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    decision: Mapped[str] = mapped_column(String(8))  # "commit" | "abort" | "approval"
    gid: Mapped[str | None] = mapped_column(String(200))
    outcomes: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class OutboxMessage(Base):
    """Work for the tool worker, written in the transaction that decided it (a call issued, a
    turn committed, an effect to undo). The broker only carries the call id as a doorbell; the
    relay sends it again while the row is not done, so a lost message or a killed worker delays
    the work but never loses it. A worker holds the row locked while it works on it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "next_at",
                            postgresql_where=text("done_at IS NULL")),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # "run" | "compensate"
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = _now()
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_at: Mapped[datetime] = _now()
    sends: Mapped[int] = mapped_column(Integer, default=0)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TranscriptChunk(Base):
    """What the user said, as the agent heard it: a partial or final chunk and when (the
    dashboard's session timeline)."""

    __tablename__ = "transcript_chunks"
    __table_args__ = (
        Index("ix_transcript_chunks_session_id_at", "session_id", "at"),
        Index("ix_transcript_chunks_tenant_id", "tenant", "id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn_id: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class, typed as such (for Core statements)."""
    return cast(Table, model.__table__)

"""The dashboard's own tables (migration 0004), on the ledger's metadata."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.ledger.models import Base, _now


class TranscriptChunk(Base):
    """What the user said, as the agent heard it: a partial or final chunk and when."""

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


class WorkerHeartbeat(Base):
    """A tool worker process, touched by its housekeeping loop
    (``gateway.tasks.worker.worker_beat``)."""

    __tablename__ = "worker_heartbeats"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()

"""Request and response bodies of the admin routes (``/v1/admin/…``) and the transcript."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Me(BaseModel):
    key_id: str
    tenant: str
    role: str
    tenants: list[str] = Field(description="The tenants whose data this key sees.")


class Ttl(BaseModel):
    kind: str = Field(description="`turn`, `staged` or `approval`: which expiry applies.")
    expires_at: datetime


class Holder(BaseModel):
    """What keeps the call's effect pending, in words and in ids."""

    kind: str = Field(description="`turn_transaction`, `prepared`, `staged`, `task`, "
                      "`outbox`, `operator` or `result`.")
    label: str
    detail: dict[str, Any] = Field(default_factory=dict)


class QueueItem(BaseModel):
    id: str
    tenant: str
    session_id: str
    turn_id: str
    turn_seq: int
    turn_status: str
    client_call_id: str
    tool: str
    effect: str
    runner: str
    status: str
    requires_approval: bool
    arguments: dict[str, Any] = Field(description="Resolved when known; secrets redacted.")
    error: dict[str, Any] | None
    supersedes_id: str | None
    idempotency_key: str
    created_at: datetime
    ttl: Ttl | None
    holder: Holder
    actions: list[str] = Field(description="What an operator may do with it now.")


class QueuePage(BaseModel):
    items: list[QueueItem]
    next_cursor: str | None
    counts: dict[str, int] = Field(description="Pending calls by status (filters applied, "
                                   "except status and paging).")


class ExtendTtl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: int = Field(ge=1, le=86_400, description="How much later it should expire; the "
                         "new expiry is at most one configured TTL from now.")


class TtlView(BaseModel):
    id: str
    kind: str
    expires_at: datetime
    previous: datetime | None


class NewTranscriptChunk(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=10_000)
    final: bool = Field(default=False, description="The last chunk of the user's utterance.")
    at: datetime | None = Field(default=None, description="When it was heard; default now.")
    turn_id: str | None = Field(default=None, description="Default: the session's latest turn.")


class TranscriptChunkView(BaseModel):
    id: int
    session_id: str
    turn_id: str | None
    text: str
    final: bool
    at: datetime

"""Request and response bodies of the session and turn routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.calls.schemas import CallView, ClientId, _client_id


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict)


class CommitTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: list[ClientId] | None = Field(
        default=None, description="Client ids of the calls to keep; omitted: every live call."
    )

    @field_validator("keep", mode="before")
    @classmethod
    def _checked(cls, value: object) -> object:
        if isinstance(value, list):
            for item in value:
                _client_id(item)  # a ValueError here is a 422 naming the field
        return value

    def keep_ids(self) -> list[str] | None:
        return None if self.keep is None else [_client_id(k) for k in self.keep]


class CancelTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="cancelled by the client", max_length=500)


class TurnView(BaseModel):
    id: str
    session_id: str
    seq: int
    status: str
    opened_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    error: dict[str, Any] | None
    calls: list[CallView]


class SessionView(BaseModel):
    id: str
    created_at: datetime
    metadata: dict[str, Any]
    turns: list[TurnView]

"""Request and response bodies of the call routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ClientId = int | str


def _client_id(value: ClientId) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a client call id is a number or a short name, not "
                         f"{type(value).__name__}")
    text = str(value)
    if not text or len(text) > 64 or not text.replace("_", "").replace("-", "").isalnum():
        raise ValueError("a client call id is a number or a short name of letters, digits, - or _")
    return text


class IssueCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(description="Registered tool name, `adapter.tool`.")
    arguments: dict[str, Any] = Field(default_factory=dict)
    client_call_id: str = Field(
        description="The agent's id for the call (a number or a short name; unique per turn)."
    )
    depends_on: list[str] = Field(default_factory=list)
    supersedes: str | None = Field(
        default=None, description="Amend: the client id of the live call this one replaces."
    )

    @field_validator("client_call_id", "supersedes", mode="before")
    @classmethod
    def _normalise(cls, value: ClientId | None) -> str | None:
        return None if value is None else _client_id(value)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _normalise_all(cls, value: object) -> object:
        return [_client_id(v) for v in value] if isinstance(value, list) else value


class CancelCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="cancelled by the client", max_length=500)


class CallView(BaseModel):
    id: str
    session_id: str
    turn_id: str
    client_call_id: str
    tool: str
    effect: str
    runner: str
    requires_approval: bool
    status: str
    arguments: dict[str, Any]
    resolved_arguments: dict[str, Any] | None
    depends_on: list[str] = Field(description="Client ids of the calls this one depends on.")
    supersedes: str | None = Field(description="Id of the call this one amended.")
    result: Any
    error: dict[str, Any] | None
    replays: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    decided_at: datetime | None
    expires_at: datetime | None
    approval_expires_at: datetime | None = None
    confirm_token: str | None = Field(
        default=None, description="Only in the answer that staged a call needing approval: "
        "the single-use token with which the app (not only an admin) may approve it.")


class ApprovalDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirm_token: str | None = Field(default=None, description="Needed with an app key.")
    reason: str | None = Field(default=None, max_length=500)


class CallPage(BaseModel):
    items: list[CallView]
    next_cursor: str | None

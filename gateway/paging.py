"""Keyset paging of call lists (``GET /v1/calls``, the dashboard's queue): an opaque cursor
naming the last row of a page by its creation time and id."""

from __future__ import annotations

import base64
from datetime import datetime

from gateway.errors import BadRequest


def encode_cursor(created_at: datetime, call_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{call_id}".encode()).decode()


def decode_cursor(value: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) a cursor names; None for no cursor; 400 for a malformed one."""
    if not value:
        return None
    try:
        stamp, call_id = base64.urlsafe_b64decode(value.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), call_id
    except ValueError as error:
        raise BadRequest(f"invalid cursor {value!r}") from error

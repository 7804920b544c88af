"""The per-call context handed to every tool function as its first argument, ``ctx``.

The gateway builds it; the model never sees it and cannot influence it. Identity fields come from
the call's ledger row, so a tool can use ``idempotency_key`` when talking to external systems.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tool_adapters.sdk.errors import ToolFailed

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _default_logger() -> logging.Logger:
    return logging.getLogger("specgate.tool")


@dataclass(slots=True)
class ToolContext:
    """Everything a tool may know about the call it serves, besides its arguments.

    ``db`` is the tool's database session (runner ``db`` only); the gateway owns its transaction,
    so tools must not commit or roll it back. ``settings`` holds the adapter's settings and
    secrets, which is why it is left out of the repr.
    """

    call_id: str
    idempotency_key: str
    tenant: str
    session_id: str
    turn_id: str
    db: Session | None = None
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)
    logger: logging.Logger = field(default_factory=_default_logger, repr=False)

    @property
    def session(self) -> Session:
        """The database session, or a terminal error for tools that have none (runner ``task``)."""
        if self.db is None:
            raise ToolFailed("this tool has no database session")
        return self.db

"""The agent's book of its calls: each version of a model call as a ``CallRecord``, its
``Outcome``, how a gateway call's view reads to the model (``observation``, ``why_gone``) and
what a commit's answer does to the records it kept (``record_commit``).

Only bookkeeping lives here; ``agent_worker.calls`` posts the calls to the gateway, settles and
commits them, and moves their records along.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent_worker.events import Cancelled, External, Observation
from agent_worker.gateway_client import LIVE
from agent_worker.protocol import ToolCall

ToolLatency = Callable[[ToolCall], float]


class Outcome(StrEnum):
    PENDING = "pending"
    OK = "ok"  # held, succeeded or staged: the model has its observation
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "amended"
    REMOVED = "removed"
    COMMITTED = "committed"


ALIVE = frozenset({Outcome.PENDING, Outcome.OK})


@dataclass
class CallRecord:
    call: ToolCall
    version: int
    deps: dict[int, CallRecord]
    outcome: Outcome = Outcome.PENDING
    view: dict[str, Any] | None = None
    turn_id: str | None = None
    epoch: int = 0
    posting: bool = False
    posted: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> int:
        return self.call.id

    @property
    def gateway_live(self) -> bool:
        return self.view is not None and self.view["status"] in LIVE

    def end(self, outcome: Outcome) -> bool:
        """Move out of the alive outcomes; False when it already had."""
        if self.outcome not in ALIVE:
            return False
        self.outcome = outcome
        self.settled.set()
        if self.task is not None and not self.posting and self.task is not _current_task():
            self.task.cancel()
        return True


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def observation(view: dict[str, Any]) -> Any:
    if view["status"] == "failed":
        return {"error": view.get("error")}
    if view["status"] == "staged":
        return {"status": "staged", "message": "validated; it runs when the turn commits"}
    return view.get("result")


def why_gone(view: dict[str, Any]) -> str:
    if view["status"] == "conflict":
        return ("conflict: replayed after an earlier call was undone, it gave another result "
                "than the one you saw; its effect was undone")
    return f"{view['status']} by the gateway"


def record_commit(kept: list[CallRecord], views: list[dict[str, Any]]) -> list[External]:
    """Read a commit's answer into the kept records; what the model must be told (kept calls
    that failed or left the turn at commit)."""
    told: list[External] = []
    by_gateway_id = {r.view["id"]: r for r in kept if r.view is not None}
    for view in views:
        record = by_gateway_id.get(view["id"])
        if record is None or record.outcome != Outcome.OK:
            continue
        record.view = view
        if view["status"] in {"committed", "awaiting_approval"}:
            record.outcome = Outcome.COMMITTED
        elif view["status"] == "failed" and record.end(Outcome.FAILED):
            told.append(Observation(record.id, observation(view)))
        elif record.end(Outcome.CANCELLED):
            told.append(Cancelled(record.id, why_gone(view)))
    return told

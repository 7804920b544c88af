"""What travels on the runtime's one event queue: user chunks, what the call graph reports
(observations, cancellations, errors) and the model's output (deltas, end, failure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent_worker import protocol


@dataclass(frozen=True)
class UserChunk:
    """Words of the user heard up to ``spoken_at`` (end of the chunk's last word, on the clock);
    ``final``: the utterance is over."""

    text: str
    final: bool = False
    spoken_at: float | None = None


@dataclass(frozen=True)
class Observation:
    call_id: int
    payload: Any


@dataclass(frozen=True)
class Cancelled:
    call_id: int
    reason: str


@dataclass(frozen=True)
class ErrorNote:
    message: str


@dataclass(frozen=True)
class ModelDelta:
    generation: int
    text: str


@dataclass(frozen=True)
class ModelDone:
    generation: int


@dataclass(frozen=True)
class ModelFailed:
    generation: int
    error: str


External = UserChunk | Observation | Cancelled | ErrorNote
Event = External | ModelDelta | ModelDone | ModelFailed


def render(event: External) -> str:
    """The tag the model is shown for an event (a user chunk: its query update)."""
    if isinstance(event, UserChunk):
        return protocol.render_update(event.text, final=event.final)
    if isinstance(event, Observation):
        return protocol.render_observation(event.call_id, event.payload)
    if isinstance(event, Cancelled):
        return protocol.render_cancelled(event.call_id, event.reason)
    return protocol.render_error(event.message)

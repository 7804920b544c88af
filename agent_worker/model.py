"""The model side of the runtime: the transcript a model sees, the ``Backend`` protocol, and
declared latency profiles.

A backend turns a ``Context`` (system prompt, the transcript so far, the tools) into an async
stream of text deltas. The runtime consumes it in a task and cancels that task when an event
arrives; the stream is closed (``aclose``), so a backend releases its connection or request in
a ``finally``. The next step is a new call to ``stream`` with the longer transcript.

Transcript roles: what the runtime injects is ``user``, what the model wrote is ``assistant``;
consecutive segments of one role are merged, so a chat model sees alternating messages.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["user", "assistant"]


@dataclass
class Transcript:
    segments: list[tuple[Role, str]] = field(default_factory=list)

    def add(self, role: Role, text: str) -> None:
        if not text:
            return
        if self.segments and self.segments[-1][0] == role:
            self.segments[-1] = (role, self.segments[-1][1] + text)
        else:
            self.segments.append((role, text))


@dataclass(frozen=True)
class Context:
    system: str
    segments: tuple[tuple[Role, str], ...]
    tools: tuple[dict[str, Any], ...] = ()

    def messages(self) -> list[dict[str, str]]:
        """Chat messages: the system prompt, then the transcript."""
        return [{"role": "system", "content": self.system},
                *({"role": role, "content": text} for role, text in self.segments)]


class Backend(Protocol):
    name: str

    def stream(self, context: Context) -> AsyncGenerator[str, None]:
        """Text deltas of the model's next step; closed early when the runtime interrupts."""


@dataclass(frozen=True)
class LatencyProfile:
    """Declared model cost for backends without a real model: time to first token, then
    ``tokens_per_s``. A token is counted as 4 characters of output (the usual rule of thumb
    for English and JSON with BPE tokenizers)."""

    name: str
    ttft_s: float
    tokens_per_s: float

    @property
    def seconds_per_char(self) -> float:
        return 0.0 if math.isinf(self.tokens_per_s) else 1.0 / (4 * self.tokens_per_s)

    def seconds(self, text: str) -> float:
        """One uninterrupted step writing ``text``: the first token, then the text."""
        return self.ttft_s + len(text) * self.seconds_per_char


# Named profiles. "cloud": a hosted realtime/chat model over the network (first token ≈0.6 s,
# ≈60 tokens/s); "edge": a small fine-tuned model (≈3B) on a local GPU (≈0.15 s, ≈120 tokens/s);
# "instant": no model cost at all, for the ideal bound and for tests.
PROFILES = {
    "cloud": LatencyProfile("cloud", 0.6, 60.0),
    "edge": LatencyProfile("edge", 0.15, 120.0),
    "instant": LatencyProfile("instant", 0.0, math.inf),
}


def profile(name: str) -> LatencyProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown latency profile {name!r}; known: {sorted(PROFILES)}") \
            from None

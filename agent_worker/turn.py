"""The state of one user turn in the runtime, its configuration and its result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from agent_worker.call_records import ToolLatency
from agent_worker.events import External
from agent_worker.prompt import ToolListing
from agent_worker.protocol import StreamParser

Mode = Literal["speculative", "sync"]


@dataclass(frozen=True)
class AgentConfig:
    mode: Mode = "speculative"
    max_errors: int = 3  # malformed steps in a row before the turn fails
    max_steps: int = 200  # per user turn: a model that never answers fails the turn
    # injected (declared) tool latency: docs/architecture.md#benchmarks
    tool_latency: ToolLatency | None = None
    instructions: str | None = None  # appended to the system prompt
    tool_listing: ToolListing = "full"  # how the system prompt lists the tools (prompt.py)
    # An event that arrives while the model writes a <tool_call> or <remove> waits until that
    # action is complete (a few tokens) instead of cutting it: a call cut off is written again
    # from scratch in the next step, which costs a slow model its whole first token latency.
    finish_actions: bool = True


@dataclass
class TurnResult:
    answer: str
    last_word_at: float | None
    answer_started_at: float
    answered_at: float
    steps: int
    errors: int
    interrupts: int

    @property
    def post_turn_latency(self) -> float | None:
        """From the end of the user's last word to the start of the answer
        (docs/architecture.md#benchmarks)."""
        if self.last_word_at is None:
            return None
        return self.answer_started_at - self.last_word_at


@dataclass(frozen=True)
class CommitDone:
    """The commit of a commit point finished; what it reported is in ``TurnState``."""


@dataclass
class Generation:
    number: int
    task: asyncio.Task[None]
    parser: StreamParser
    acted: bool = False
    answering: bool = False


@dataclass
class TurnState:
    final_heard: bool = False
    committed: bool = False  # the commit point has passed
    wants_step: bool = False  # something was injected the model has not yet seen
    generation: Generation | None = None
    commit: asyncio.Task[list[External]] | None = None
    reported: list[External] = field(default_factory=list)  # by the commit-point commit
    deferred: list[External] = field(default_factory=list)  # until the answer is given
    held_back: list[External] = field(default_factory=list)  # until the action is written
    buffered: list[str] = field(default_factory=list)  # sync mode: words before the final
    answer: str | None = None
    answer_started_at: float | None = None
    last_word_at: float | None = None
    steps: int = 0
    errors: int = 0
    error_streak: int = 0
    interrupts: int = 0

"""The ideal bound (docs/architecture.md#benchmarks): the post-turn critical path if every call had
been issued at the earliest possible moment.

A call's inputs are known when the chunk completing a spoken value has been delivered, when
the first call whose result shows a value has returned (issue + its tool latency), or — for
values found nowhere — at the last word; a value with several sources counts the earliest.
From the moment all its inputs are known, the model needs one time to first token and then
writes the call (its text at the profile's speed), and it is issued when its text is
complete; a call ``after`` another is written no earlier than right behind it (in the same
step, without a new first token). It returns after its tool latency. The answer starts once
the user has finished and every call has returned, one time to first token plus the first
piece of text later (when the ``<answer>`` tag is out).

It is a lower bound of what the oracle can do on the same declared costs: every call gets a
model step of its own, none waits for another generation to end and no step is ever
interrupted. measured / ideal is how close the runtime comes to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent_worker import protocol
from agent_worker.backends.oracle import PIECE_CHARS
from agent_worker.model import LatencyProfile


@dataclass(frozen=True)
class Input:
    """When one value of a call is known: when heard, or when the first of ``producers``
    (calls whose result shows it) returns; neither source: at the last word."""

    heard_at: float | None = None
    producers: tuple[int, ...] = ()
    value: str = ""


@dataclass(frozen=True)
class PlannedCall:
    id: int
    inputs: tuple[Input, ...]
    text_s: float  # the model's time to write the call, after its first token
    latency_s: float  # the tool's (injected) latency
    after: tuple[int, ...] = ()


@dataclass(frozen=True)
class Ideal:
    issued: dict[int, float]
    returned: dict[int, float]
    answer_start: float
    post_turn_s: float  # answer_start - last word
    used: dict[int, tuple[int, ...]]  # per call: the producers whose result it waited for
    late: frozenset[str]  # values only a result shows, taken at the last word (see ``ideal``)


def text_seconds(call: protocol.ToolCall, profile: LatencyProfile) -> float:
    """How long the oracle takes to write ``call`` after its first token."""
    return len(protocol.render_tool_call(call)) * profile.seconds_per_char


def answer_seconds(answer: str, profile: LatencyProfile) -> float:
    """From the model's last input to the start of its answer (the first piece out)."""
    return profile.seconds(f"<answer>{answer}</answer>"[:PIECE_CHARS])


@dataclass
class _Schedule:
    last_word_at: float
    first_token_s: float
    issued: dict[int, float] = field(default_factory=dict)
    returned: dict[int, float] = field(default_factory=dict)
    used: dict[int, tuple[int, ...]] = field(default_factory=dict)
    late: set[str] = field(default_factory=set)

    def known(self, source: Input, stuck: bool) -> tuple[float, int | None]:
        """(when the value is known, the producer that told it or None); inf while only
        producers not yet scheduled could tell it (at the last word when ``stuck``)."""
        told = [(self.returned[p], p) for p in source.producers if p in self.returned]
        options = ([(source.heard_at, None)] if source.heard_at is not None else []) + told
        if options:
            return min(options, key=lambda option: (option[0], option[1] is not None))
        if not source.producers or stuck:
            return self.last_word_at, None
        return math.inf, None

    def tentative(self, call: PlannedCall, stuck: bool) -> tuple[float, float, tuple[int, ...]]:
        """(return, start of writing, producers used) if scheduled now; inf when it must
        wait for calls not scheduled yet."""
        if any(a not in self.issued for a in call.after):
            return math.inf, math.inf, ()
        known = [self.known(source, stuck) for source in call.inputs]
        ready = max((t for t, _ in known), default=0.0)
        start = max([ready + self.first_token_s, *(self.issued[a] for a in call.after)])
        used = tuple(sorted({p for _, p in known if p is not None}))
        return start + call.text_s + call.latency_s, start, used


def ideal(calls: Sequence[PlannedCall], last_word_at: float, first_token_s: float,
          answer_s: float) -> Ideal:
    """The critical path (see the module docstring).

    A value may be told by several calls, earlier or later in τ²'s order, so calls are
    scheduled in the order they return (Knuth's generalization of Dijkstra's algorithm: a
    call's return time only grows with its inputs', so the earliest tentative return is
    final). Should calls wait on each other's results in a cycle, the values holding the
    cycle are taken as known at the last word (listed in ``late``; the oracle gets them then
    too)."""
    schedule = _Schedule(last_word_at, first_token_s)
    pending = {call.id: call for call in calls}
    while pending:
        stuck = False
        best = min((schedule.tentative(c, stuck), c.id) for c in pending.values())
        if math.isinf(best[0][0]):
            stuck = True
            best = min((schedule.tentative(c, stuck), c.id) for c in pending.values())
        (returned, start, used), call_id = best
        call = pending.pop(call_id)
        if stuck:
            schedule.late |= {s.value for s in call.inputs if s.heard_at is None
                              and not any(p in schedule.returned for p in s.producers)}
        schedule.issued[call_id] = start + call.text_s
        schedule.returned[call_id] = returned
        schedule.used[call_id] = used
    answer_start = max([last_word_at, *schedule.returned.values()]) + answer_s
    return Ideal(schedule.issued, schedule.returned, answer_start, answer_start - last_word_at,
                 schedule.used, frozenset(schedule.late))

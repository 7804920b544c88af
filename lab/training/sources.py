"""What every task source shares: the ``Spec`` it hands ``streams`` (the tools, the oracle's
task, the timed chunks, every result a call may get, tool latencies, wrong early calls), the
generator's options, the per-sample random draws and the split of tasks into train and test.

**Determinism.** Every draw of a sample comes from one ``random.Random`` seeded with the text
``"<seed>/<task key>/<sample index>"`` (Python seeds a string through SHA-512, the same on every
machine and run), and tool latencies from ``session.stable_latency`` salted the same way, so
the same options give the same bytes; sets are never iterated where the order would show.

**Word timing.** Each word lasts 60/wpm seconds times a factor drawn in [1 - jitter, 1 +
jitter] (the mean rate stays ``wpm``); words are grouped in ``chunk_s`` chunks by the runtime's
own ``inputs.chunk_words``.

**Wrong early calls.** Each gold call with a string argument the user says is picked with
probability ``wrong_rate``: its value heard last is replaced by a plausible wrong one (the
source says which: τ²'s seed, BFCL's other tasks), guessed two or three chunks before the one
completing the right value (the user is about to say it; any later, the call would rarely be
written before the right value cuts it), not before the chunk completing its other spoken
values; then amended or removed, half and half.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agent_worker import inputs
from agent_worker.backends.oracle import OracleTask, mentions
from agent_worker.call_records import ToolLatency
from agent_worker.model import LatencyProfile, profile
from agent_worker.placeholders import parse
from agent_worker.prompt import TOOL_LISTINGS
from agent_worker.protocol import ToolCall
from agent_worker.session import stable_latency
from lab.tau2bench.tau2_stream import heard_at

Mode = Literal["async", "sync"]
Chunks = tuple[tuple[float, str], ...]
ResultKey = tuple[int, str]  # (gold id the call stands for, its arguments as ``call_key``)


def call_key(arguments: Any) -> str:
    """Arguments as one canonical string (keys sorted), to look results up by."""
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=str)


@dataclass(frozen=True)
class Result:
    """What the agent is shown for a call (``call_records.observation``'s shape); ``ok`` False: the
    call failed, and calls depending on it are cancelled."""

    payload: Any
    ok: bool = True


@dataclass(frozen=True)
class WrongCall:
    """Gold call ``gold`` guessed before ``right`` is said, with ``wrong`` in its place, at the
    first step from ``at`` on where its other values are known; later amended or removed."""

    gold: int
    right: str
    wrong: str
    arguments: dict[str, Any]
    at: float
    fix: Literal["amend", "remove"]


@dataclass(frozen=True)
class Spec:
    """One utterance to play: the tools as the gateway lists them, the oracle's task, the
    timed chunks, every result a call may get, each call's tool latency, the wrong calls."""

    key: str
    tools: tuple[dict[str, Any], ...]
    task: OracleTask
    chunks: Chunks
    results: Mapping[ResultKey, Result]
    latency: Callable[[ToolCall], float]
    wrong: tuple[WrongCall, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


# A guess comes two or three chunks before the right value (the last chunk before it would
# leave the model too little time to write the call before the right value cuts it).
GUESS_CHUNKS = 2
WrongValue = Callable[[str, str, dict[str, Any]], str | None]  # (argument, right, arguments)


@dataclass(frozen=True)
class Options:
    seed: int = 0
    samples_per_task: int = 2
    wpm: float = inputs.SPEECH_WPM
    jitter: float = 0.3
    chunk_s: float = inputs.CHUNK_S
    profile: str = "edge"
    tool_latency: tuple[float, float] = (0.5, 1.0)
    wrong_rate: float = 0.4
    correction_rate: float = 0.25
    tools: str = "all"  # the system prompt lists "all" the gateway's tools, or those "used"
    tool_listing: str = "full"  # how it lists them (agent_worker.prompt)

    def check(self) -> None:
        """A ``ValueError`` naming the first option out of range."""
        profile(self.profile)
        low, high = self.tool_latency
        rules = [(self.samples_per_task >= 1, "samples per task must be at least 1"),
                 (self.wpm > 0, "the speech rate must be positive"),
                 (0 <= self.jitter < 1, "the jitter must be in [0, 1)"),
                 (self.chunk_s > 0, "the chunk length must be positive"),
                 (0 <= low <= high, "the tool latency needs 0 <= low <= high"),
                 (0 <= self.wrong_rate <= 1, "the wrong-call rate must be in [0, 1]"),
                 (0 <= self.correction_rate <= 1, "the correction rate must be in [0, 1]"),
                 (self.tools in ("all", "used"), "the tools listed must be all or used"),
                 (self.tool_listing in TOOL_LISTINGS,
                  f"the tool listing must be one of {', '.join(TOOL_LISTINGS)}")]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)

    @property
    def latency_profile(self) -> LatencyProfile:
        return profile(self.profile)


def listed(spec: Spec, tools: str) -> Spec:
    """``spec`` with the tools its system prompt lists: "all" of them (what the gateway lists
    at inference), or only those its gold calls "used" (a prompt a few thousand tokens
    shorter, for a trainer that truncates; the model then sees another prompt at inference)."""
    if tools == "all":
        return spec
    used = {call.name for call in spec.task.calls}
    return replace(spec, tools=tuple(t for t in spec.tools if t["name"] in used))


def sample_rng(options: Options, key: str, index: int) -> random.Random:
    return random.Random(f"{options.seed}/{key}/{index}")


def sample_latency(options: Options, key: str, index: int) -> ToolLatency:
    """U[low, high] per call, a hash of the call and the sample: the same call waits as long
    in the async stream and in its sync variant."""
    low, high = options.tool_latency
    return stable_latency(low, high, options.seed, f"{key}/{index}")


def timed_chunks(text: str, rng: random.Random, options: Options) -> Chunks:
    """(delivery time, words) per chunk of ``text`` spoken with jittered word lengths."""
    each, at, words = 60.0 / options.wpm, 0.0, []
    for word in text.split():
        length = each * rng.uniform(1 - options.jitter, 1 + options.jitter)
        words.append(inputs.Word(word, at, at + length))
        at += length
    return tuple(inputs.chunk_words(words, options.chunk_s))


def plan_wrong_calls(task: OracleTask, chunks: Chunks, rng: random.Random, rate: float,
                     eligible: Callable[[ToolCall], bool], wrong_value: WrongValue,
                     ) -> tuple[WrongCall, ...]:
    """The wrong early calls of one sample (see the module docstring)."""
    planned = []
    for gold in task.calls:
        if rng.random() >= rate or not eligible(gold):
            continue
        spoken = sorted((at, name, value) for name, value in gold.arguments.items()
                        if isinstance(value, str) and parse(value) is None
                        and (at := heard_at(chunks, value)) is not None)
        if not spoken:
            continue
        ready, name, right = spoken[-1]
        since = spoken[-2][0] if len(spoken) > 1 else chunks[0][0]
        window = [at for at, _ in chunks if since <= at < ready]
        moments = window[-GUESS_CHUNKS - 1:-1] or window[-1:]
        wrong = wrong_value(name, right, gold.arguments) if moments else None
        if wrong is None:
            continue
        planned.append(WrongCall(gold.id, right, wrong, {**gold.arguments, name: wrong},
                                 rng.choice(moments), rng.choice(("amend", "remove"))))
    return tuple(planned)


def acceptable_wrong(option: str, right: str, text: str, taken: set[str]) -> bool:
    """A wrong value the oracle cannot mistake for a right one: not the right value, neither
    inside the other, not said, no gold value."""
    return (bool(option) and option != right and not mentions(option, right)
            and not mentions(right, option) and not mentions(text, option)
            and option not in taken and "<" not in option and ">" not in option)


def split(keys: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, test) task keys: the test share drawn by a hash of the seed and the key, at
    least one test task when there are two tasks or more and ``fraction`` > 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the test fraction must be in [0, 1), got {fraction!r}")
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}/{k}".encode()).hexdigest())
    count = round(len(keys) * fraction)
    if fraction > 0 and len(keys) >= 2:
        count = max(count, 1)
    test = set(ranked[:count])
    return [k for k in keys if k not in test], [k for k in keys if k in test]

"""Timed streams for clock-based training: one utterance of a tool-calling task played through
the agent runtime itself and written down as the chat messages the model read and wrote.

**One loop, fakes at its edge.** A stream is a session of the real runtime
(``agent_worker.session.run_session``: ``Agent``, its call graph, the gateway client) on a
``VirtualClock``, exactly as ``specgate bench tau2`` drives it; every rule of the stream —
when a step starts, how an event cuts it (a think closed with ``</think_interrupted>``, an
action finished first, an answer never cut), the commit point, calls posted once their
dependencies settled and after the previous commit, cascades, the synchronous baseline's one
final update — is the runtime's, not a copy of it. Only its two edges are stand-ins:

- the model (``author.Author``): the scripted oracle with what is particular to training data
  (templated thinks, deliberate wrong early calls and their fixes), writing at the latency
  profile's pace;
- the gateway (``scripted_gateway.ScriptedGateway``): in process, behind the agent's own
  ``GatewayClient`` (httpx's ``MockTransport``), answering each call with the sample's result
  (τ²'s reference outcome, BFCL's executed result); the tool latency is the runtime's injected
  one (``AgentConfig.tool_latency``).

**Why not a real gateway** (measured on a machine with 2 shared cores, ``--tokenizer none``).
``specgate bench tau2 --domain retail --tasks 4 --profile edge`` — the runtime against a real
gateway child with the retail adapter over Postgres, seeded and reset per session — took
0.15–0.67 s per session (0.4 s mean) after ~6 s of start-up. ``data make`` plays two sessions
per sample (async and sync), 620 for the 310 τ² samples of a full run: minutes of gateway and
database work, for results τ²'s reference replay already gives (and the wrong early calls'
results come from τ²'s environment, not an adapter); BFCL has no gateway adapter at all. So
the gateway is the one edge faked in process; the runtime is real. ``data make``, before (the
former simulator, a copy of the runtime's rules) → after (this module):

- ``--tasks 4`` (88 samples): 5 s → 6–7 s of generation (wall 5.7 s → 7.2–8.0 s, CPU
  5.2–5.4 s → 7.0–7.5 s);
- all tasks (3544 samples): 56 s → 129 s. About 40% of the new time is httpx building and
  answering the agent's requests (mostly its per-chunk transcript posts): the price of running
  the agent's own gateway client unchanged. Both give 0 samples left out; the sync samples are
  byte for byte the same, and 90% of the async ones (the others differ where the simulator
  had drifted: an event arriving in a step's first-token latency, or while an action's
  opening tag is still being written, waited in the simulator but cuts the step in the
  runtime; and the author skips its think only after a message the transcript shows cut
  short, as a model reading it would).

**What is written down** comes from the runtime: the system prompt the model was given (as
the author received it), then, from the runtime's trace (``agent_worker.trace``), every
injection and every message the model kept, merged as the runtime's transcript merges them, up
to its answer; a message the runtime cut off is marked ``"interrupted": true``. ``meta`` has
the timing (last word, answer start, post-turn latency), the steps, each interrupt (when,
inside which tag, how much was kept, since when an event was held back), every version of
every call (issued, posted, settled — when its observation or cancellation reached the
runtime —, how it ended, the gold call the author meant) and the wrong calls with their fix.

Not played: gateway conflicts, a commit that fails, approvals. A stream in which the runtime
refused a step (``<error>``), the gateway had no result for a call, or no answer came is
abandoned (``SimulationError``).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from agent_worker import inputs
from agent_worker.call_records import ALIVE, Outcome
from agent_worker.clock import VirtualClock
from agent_worker.errors import AgentError
from agent_worker.gateway_client import LIVE
from agent_worker.model import LatencyProfile, Transcript
from agent_worker.prompt import ToolListing
from agent_worker.runtime import AgentConfig
from agent_worker.session import SessionResult, run_session
from agent_worker.trace import Trace
from lab.training.author import Author, Note, SimulationError, render
from lab.training.scripted_gateway import ScriptedGateway
from lab.training.sources import Mode, Spec, call_key

__all__ = ["MAX_STEPS", "Mode", "SimulationError", "Spec", "Stream", "call_key", "render",
           "simulate"]

MAX_STEPS = 200  # the runtime's AgentConfig.max_steps
WALL_LIMIT_S = 120.0  # a stream that hangs (a bug) is abandoned, not the run
STANDING = frozenset({Outcome.PENDING, Outcome.OK, Outcome.FAILED})


@dataclass
class Stream:
    messages: list[dict[str, Any]]
    meta: dict[str, Any]


def simulate(spec: Spec, mode: Mode, profile: LatencyProfile, rng: random.Random,
             max_steps: int = MAX_STEPS, listing: ToolListing = "full") -> Stream:
    """Play ``spec`` to its answer through the runtime (see the module docstring);
    ``listing``: how the system prompt lists the tools (``agent_worker.prompt``)."""
    if not spec.chunks:
        raise SimulationError(f"{spec.key}: the utterance is empty")
    return asyncio.run(_play(spec, mode, profile, rng, max_steps, listing))


async def _play(spec: Spec, mode: Mode, profile: LatencyProfile, rng: random.Random,
                max_steps: int, listing: ToolListing) -> Stream:
    clock = VirtualClock()
    trace = Trace(clock)
    author = Author(spec, mode, profile, clock, rng)
    edge = ScriptedGateway(spec)
    config = AgentConfig(mode="speculative" if mode == "async" else "sync",
                         max_steps=max_steps, tool_latency=spec.latency, tool_listing=listing)
    async with edge.client(clock) as gateway:
        session = asyncio.create_task(run_session(
            gateway, author, clock, lambda c: inputs.timed_chunks(c, spec.chunks),
            config=config, trace=trace, metadata={"training": spec.key, "mode": mode}))
        result = await _watch(session, edge, author, spec.key)
    errors = trace.of("model_error")
    if errors:
        raise SimulationError(f"{spec.key}: the runtime refused a step: "
                              f"{errors[0]['message']}")
    meta = {"mode": mode, "profile": profile.name, **_timing(result, spec, trace),
            "interrupts": _interrupts(trace), **_calls(trace, author, spec), **spec.meta}
    return Stream(_messages(author.system, trace, spec.key), meta)


async def _watch(session: asyncio.Task[SessionResult], edge: ScriptedGateway, author: Author,
                 key: str) -> SessionResult:
    """The session's result; a ``SimulationError`` when the gateway had no result for a call
    (the session is stopped at once), the author could not write, or the turn failed."""
    assert edge.refused is not None
    refused = asyncio.create_task(edge.refused.wait())
    done, _ = await asyncio.wait({session, refused}, timeout=WALL_LIMIT_S,
                                 return_when=asyncio.FIRST_COMPLETED)
    refused.cancel()
    if edge.problem is not None or session not in done:
        session.cancel()
        await asyncio.gather(session, refused, return_exceptions=True)
        raise SimulationError(edge.problem or f"{key}: the stream did not end in "
                                              f"{WALL_LIMIT_S:.0f} s")
    try:
        return session.result()
    except AgentError as error:
        raise author.failure or SimulationError(f"{key}: {error}") from error


# What is written down -------------------------------------------------------------------------

def _messages(system: str, trace: Trace, key: str) -> list[dict[str, Any]]:
    """The system prompt, then the transcript as the trace shows it: injections and what the
    model kept, up to the answer (events deferred past it belong to the next turn)."""
    cut = {r["generation"] for r in trace.of("interrupt")}
    transcript = Transcript()
    interrupted: list[bool] = []
    for record in trace.records:
        if record["kind"] == "inject":
            transcript.add("user", record["text"])
        elif record["kind"] == "generation_end" and record["text"]:
            before = len(transcript.segments)
            transcript.add("assistant", record["text"])
            if len(transcript.segments) == before:
                raise SimulationError(f"{key}: two model steps without input between")
            interrupted.append(record["generation"] in cut)
    flags = iter(interrupted)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for role, text in transcript.segments:
        message: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant" and next(flags):
            message["interrupted"] = True
        messages.append(message)
    return messages


def _timing(result: SessionResult, spec: Spec, trace: Trace) -> dict[str, Any]:
    last, turn = spec.chunks[-1][0], result.turn
    return {"chunks": len(spec.chunks), "last_word_at": _t(last),
            "answer_started_at": _t(turn.answer_started_at),
            "post_turn_s": _t(turn.answer_started_at - last), "steps": turn.steps}


def _interrupts(trace: Trace) -> list[dict[str, Any]]:
    """Each cut: when, inside which tag, how many characters were kept and, for a step cut
    once the action it was writing was complete, when the event that waited arrived."""
    kept = {r["generation"]: len(r["text"]) for r in trace.of("generation_end")}
    found: list[dict[str, Any]] = []
    held: float | None = None
    for record in trace.records:
        if record["kind"] == "generation_start":
            held = None
        elif record["kind"] == "held_back" and held is None:
            held = record["t"]
        elif record["kind"] == "interrupt":
            entry = {"t": _t(record["t"]), "inside": record["in_tag"],
                     "kept": kept[record["generation"]]}
            if held is not None:
                entry["held_back_from"] = _t(held)
            found.append(entry)
            held = None
    return found


@dataclass
class _Version:
    """One version of one model call, as the trace tells its life."""

    row: dict[str, Any]
    note: Note | None
    outcome: Outcome = Outcome.PENDING
    settled: str | None = None  # the gateway status it settled with

    def end(self, outcome: Outcome, at: float) -> None:
        """The model removed or amended it, or the runtime cancelled it: as the runtime's
        ``CallRecord.end``, except that a failed call the model drops counts as dropped."""
        if self.outcome not in STANDING or (outcome == Outcome.CANCELLED
                                            and self.outcome not in ALIVE):
            return
        if self.outcome in ALIVE:
            self.row["settled_at"] = _t(at)
        self.outcome = outcome


def _calls(trace: Trace, author: Author, spec: Spec) -> dict[str, Any]:
    versions: dict[tuple[int, int], _Version] = {}
    latest: dict[int, _Version] = {}
    for r in trace.records:
        kind, at = r["kind"], r["t"]
        if kind == "call_issued":
            if r["id"] in latest:
                latest[r["id"]].end(Outcome.SUPERSEDED, at)
            note = author.notes.get((r["id"], call_key(r["arguments"])))
            row = {"id": r["id"], "version": r["version"], "name": r["name"],
                   "gold": note.gold if note else None,
                   "wrong": note is not None and note.wrong is not None,
                   "issued_at": _t(at), "posted_at": None, "settled_at": None}
            versions[(r["id"], r["version"])] = latest[r["id"]] = _Version(row, note)
            continue
        version = versions.get((r.get("id", -1), r.get("version", -1)))
        if version is None:
            continue
        if kind == "call_posted":
            version.row["posted_at"] = _t(at)
        elif kind == "call_settled":
            version.settled = r["status"]
        elif kind == "observation" and version.outcome == Outcome.PENDING:
            version.outcome = Outcome.OK if version.settled in LIVE else Outcome.FAILED
            version.row["settled_at"] = _t(at)
        elif kind == "call_cancelled":
            version.end(Outcome.CANCELLED, at)
        elif kind == "call_removed":
            version.end(Outcome.REMOVED, at)
    return {"calls": [{**v.row, "outcome": str(v.outcome)} for v in versions.values()],
            "wrong_calls": [_wrong(v, spec) for v in versions.values()
                            if v.note is not None and v.note.wrong is not None]}


def _wrong(version: _Version, spec: Spec) -> dict[str, Any]:
    assert version.note is not None and version.note.wrong is not None
    plan = spec.wrong[version.note.wrong]
    fixed = {Outcome.SUPERSEDED: "amend", Outcome.REMOVED: "remove"}
    return {"id": version.row["id"], "gold": plan.gold, "right": plan.right,
            "wrong": plan.wrong, "arguments": plan.arguments,
            "fix": fixed.get(version.outcome, "none")}


def _t(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

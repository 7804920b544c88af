"""Timed streams for clock-based training (DESIGN §6, last paragraph): one utterance of a
tool-calling task played on a simulated clock and written down as the chat messages a model
reads and writes under the agent runtime.

**Who writes what.** The model's part is the scripted oracle's (``backends.oracle``): each step
it reads the transcript so far and issues the gold calls whose argument values have been heard
or observed (so a call appears right after the chunk or the result that completes its last
value, never before), pauses, or answers once every result is in. On top of it:

- a short templated ``<think>`` saying what the step does, before every action but a pause,
  and not right after a step was cut (the model then acts at once: a think written again at
  every chunk would starve a long call);
- deliberate wrong early calls (``WrongCall``): a gold call issued while one of its spoken
  values is still unsaid, with a plausible wrong value in its place. When the oracle issues
  the gold call, the wrong one is amended (its id re-emitted with the gold arguments) or
  removed (``<remove>``, then the gold call under a new id). One still standing when the user
  has finished is removed first thing, since the commit point would keep it.

**The clock follows the runtime** (``agent_worker.runtime``, ``calls``): a step starts when
something was injected and the model is idle; it costs the profile's time to first token, then
its text at the profile's speed, delivered in pieces that end at a word or a tag (what a
tokenizer emits at once: a cut think ends between words). An action is carried out when its
closing tag is out. An event arriving while the model writes cuts the step as the runtime's
``_interrupt`` does: a think cut short is kept and closed with ``</think_interrupted>``, complete
actions stand; an event arriving while an action (a call, a remove) is written waits until it is
complete (``AgentConfig.finish_actions``), then cuts the step; while ``<answer>`` streams,
events wait. Events of one instant are injected together; an event at the very instant a piece is
out comes after it. A call is posted once the calls it depends on have settled and, after a
commit point, once the previous commit is done; its observation arrives its tool latency after
posting. An amend or a remove cancels the calls that depend on the old call, reported as the
runtime reports them.

**Sync variant** (``mode="sync"``, the runtime's baseline): the whole utterance as one final
update at the last word, then the sequential oracle: one call per step, each after every
earlier observation.

Not simulated: gateway conflicts, a commit that fails, approvals, malformed steps.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent_worker import events, protocol
from agent_worker.backends.oracle import OracleBackend, literals, mentions, substitute
from agent_worker.calls import Outcome
from agent_worker.clock import VirtualClock
from agent_worker.model import PROFILES, Context, LatencyProfile, Transcript
from agent_worker.placeholders import renumber
from agent_worker.prompt import ToolListing, system_prompt
from agent_worker.protocol import (
    THINK_INTERRUPTED,
    Answer,
    AnswerStart,
    Element,
    Pause,
    Remove,
    StreamParser,
    Think,
    ToolCall,
)
from lab.training.sources import Mode, Spec, WrongCall, call_key

ALIVE = (Outcome.PENDING, Outcome.OK)
STANDING = (*ALIVE, Outcome.FAILED)  # the model's calls not removed, amended or cancelled
MAX_STEPS = 200  # the runtime's AgentConfig.max_steps
_PIECE_END = re.compile(r">(?=<|$)|\S(?=\s)")


class SimulationError(Exception):
    """The stream cannot be played to its answer (the message says why)."""


@dataclass
class Stream:
    messages: list[dict[str, Any]]
    meta: dict[str, Any]


def simulate(spec: Spec, mode: Mode, profile: LatencyProfile, rng: random.Random,
             max_steps: int = MAX_STEPS, listing: ToolListing = "full") -> Stream:
    """Play ``spec`` to its answer (see the module docstring); ``listing``: how the system
    prompt lists the tools (``agent_worker.prompt``)."""
    if not spec.chunks:
        raise SimulationError(f"{spec.key}: the utterance is empty")
    return _Sim(spec, mode, profile, rng, max_steps, listing).run()


def render(element: Element) -> str:
    """An action or think as the model writes it (the oracle's and the parser's syntax)."""
    if isinstance(element, Think):
        return f"<think>{element.text}</think>"
    if isinstance(element, ToolCall):
        return protocol.render_tool_call(element)
    if isinstance(element, Remove):
        return f"<remove>{element.id}</remove>"
    if isinstance(element, Answer):
        return f"<answer>{element.text}</answer>"
    if isinstance(element, Pause):
        return "<pause/>"
    raise TypeError(f"not something the model writes: {element!r}")


@dataclass(eq=False)
class _Record:
    """One version of one model call, as the runtime's ``CallRecord``."""

    call: ToolCall
    gold: int
    wrong: int | None  # index of the WrongCall it is
    epoch: int
    issued_at: float
    deps: tuple[_Record, ...]
    posted_at: float | None = None
    settled_at: float | None = None
    outcome: Outcome = Outcome.PENDING


class _Sim:
    def __init__(self, spec: Spec, mode: Mode, profile: LatencyProfile, rng: random.Random,
                 max_steps: int, listing: ToolListing) -> None:
        self.spec, self.mode, self.profile, self.max_steps = spec, mode, profile, max_steps
        self.listing = listing
        self.policy = _Policy(spec, mode, rng)
        self.transcript = Transcript()
        self.cut: set[int] = set()  # transcript segments the runtime cut off
        self.queue: list[tuple[float, int, events.External | _Record]] = []
        self.order = itertools.count()
        self.records: dict[int, _Record] = {}
        self.history: list[_Record] = []
        self.now, self.steps, self.epoch, self.commits_done = 0.0, 0, 0, 0
        self.heard, self.seen = "", ""  # speech and observations injected so far
        self.final = self.committed = self.wants_step = False
        self.buffered: list[str] = []
        self.answer: str | None = None
        self.answer_at: float | None = None
        self.interrupts: list[dict[str, Any]] = []

    def run(self) -> Stream:
        last = len(self.spec.chunks) - 1
        for i, (at, text) in enumerate(self.spec.chunks):
            self._push(at, events.UserChunk(text, final=i == last, spoken_at=at))
        while self.answer is None:
            upcoming = self._upcoming()
            if self.wants_step:
                self._step()
            elif upcoming is not None:
                self.now = max(self.now, upcoming)
                self._take_events()
            else:
                raise SimulationError(f"{self.spec.key}: the model waits and nothing is coming")
        return Stream(self._messages(), self._meta())

    # Events ---------------------------------------------------------------------------------

    def _push(self, at: float, item: events.External | _Record) -> None:
        heapq.heappush(self.queue, (at, next(self.order), item))

    def _upcoming(self) -> float | None:
        """When the next event arrives; a call that left the turn before its result was
        delivered has none (the runtime cancels its task)."""
        while self.queue and isinstance(self.queue[0][2], _Record) \
                and self.queue[0][2].outcome != Outcome.PENDING:
            heapq.heappop(self.queue)
        return self.queue[0][0] if self.queue else None

    def _take_events(self) -> None:
        while (upcoming := self._upcoming()) is not None and upcoming <= self.now:
            item = heapq.heappop(self.queue)[2]
            external: events.External | None = \
                self._deliver(item) if isinstance(item, _Record) else item
            if isinstance(external, events.UserChunk):
                external = self._user_chunk(external)
            if external is not None:
                self._inject(external)
            self._advance()

    def _user_chunk(self, chunk: events.UserChunk) -> events.UserChunk | None:
        self.final = self.final or chunk.final
        if self.mode == "async":
            return chunk
        self.buffered.append(chunk.text)
        if not chunk.final:
            return None
        return events.UserChunk(" ".join(t.strip() for t in self.buffered if t.strip()),
                                final=True, spoken_at=chunk.spoken_at)

    def _deliver(self, record: _Record) -> events.Observation:
        key = (record.gold, call_key(record.call.arguments))
        if key not in self.spec.results:
            raise SimulationError(f"{self.spec.key}: no result for {record.call.name} "
                                  f"{record.call.arguments}")
        result = self.spec.results[key]
        record.outcome = Outcome.OK if result.ok else Outcome.FAILED
        record.settled_at = self.now
        return events.Observation(record.call.id, result.payload)

    def _inject(self, event: events.External) -> None:
        text = events.render(event)
        self.transcript.add("user", text)
        if isinstance(event, events.UserChunk):
            self.heard += " " + event.text
        elif isinstance(event, events.Observation):
            self.seen += " " + protocol.read_injected(text)[0].text  # the body, as the oracle
        self.wants_step = True

    # The model ------------------------------------------------------------------------------

    def _step(self) -> None:
        self.wants_step, self.steps = False, self.steps + 1
        if self.steps > self.max_steps:
            raise SimulationError(f"{self.spec.key}: no answer after {self.max_steps} steps")
        elements = self.policy.step(self)
        texts = [render(e) for e in elements]
        text, ends = "".join(texts), list(itertools.accumulate(len(t) for t in texts))
        start = self.now + self.profile.ttft_s
        for element, end in zip(elements, ends, strict=True):
            if isinstance(element, Answer):
                self._answer(element, text, start)
                return
            done = self._time(start, end)
            if isinstance(element, ToolCall | Remove) and self._finish_then_cut(done, end, text):
                self._act(element)
                return
            if self._cut_before(done, text, start):
                return
            self.now = done
            self._act(element)
        self._keep(text, cut=False)

    def _finish_then_cut(self, done: float, end: int, text: str) -> bool:
        """An event arriving while an action is written waits until it is complete
        (``AgentConfig.finish_actions``): the action is carried out at ``done``, and the step
        is cut right after it."""
        upcoming = self._upcoming()
        if upcoming is None or upcoming >= done:
            return False
        self.interrupts.append({"t": round(done, 3), "inside": None, "kept": end,
                                "held_back_from": round(max(upcoming, self.now), 3)})
        self.now = done
        self._keep(text[:end], cut=True)
        return True

    def _time(self, start: float, chars: int) -> float:
        return start + chars * self.profile.seconds_per_char

    def _cut_before(self, done: float, text: str, start: float) -> bool:
        """An event arrives before ``done``: stop the step there, as the runtime does."""
        upcoming = self._upcoming()
        if upcoming is None or upcoming >= done:
            return False
        at = max(upcoming, self.now)
        per_char = self.profile.seconds_per_char
        chars = len(text) if per_char == 0 else (at - start) / per_char + 1e-6
        ends = [m.end() for m in _PIECE_END.finditer(text)]
        delivered = text[:ends[bisect.bisect_right(ends, chars) - 1]] \
            if ends and ends[0] <= chars else ""
        parser = StreamParser()
        parser.feed(delivered)
        inside = parser.incomplete
        kept = delivered + THINK_INTERRUPTED if inside == "think" \
            else delivered[:parser.complete_end]
        self._keep(kept, cut=True)
        self.interrupts.append({"t": round(at, 3), "inside": inside, "kept": len(kept)})
        self.now = at
        return True

    def _keep(self, text: str, *, cut: bool) -> None:
        if not text:
            return
        before = len(self.transcript.segments)
        self.transcript.add("assistant", text)
        if len(self.transcript.segments) == before:
            raise SimulationError(f"{self.spec.key}: two model steps without input between")
        if cut:
            self.cut.add(before)

    def _answer(self, answer: Answer, text: str, start: float) -> None:
        opened = self._time(start, text.index("<answer>") + len("<answer>"))
        if self._cut_before(opened, text, start):
            return
        self.now = self.answer_at = opened
        self._commit_point()
        self.now = self._time(start, len(text))
        self._keep(text, cut=False)  # events meanwhile wait for the next turn
        self.answer = answer.text

    def _act(self, element: Element) -> None:
        if isinstance(element, ToolCall):
            if element.id not in self.records:
                self._commit_point()
            self._issue(element)
        elif isinstance(element, Remove):
            self._end(self.records[element.id], Outcome.REMOVED)
        elif isinstance(element, Pause):
            self._commit_point()
        self._advance()

    def _commit_point(self) -> None:
        if self.final and not self.committed:
            self.committed, self.epoch = True, self.epoch + 1

    # Calls ----------------------------------------------------------------------------------

    def _issue(self, call: ToolCall) -> None:
        old = self.records.get(call.id)
        deps = tuple(self.records[d] for d in call.dependencies() if d in self.records)
        gold, wrong = self.policy.identify(call, self)
        record = _Record(call, gold, wrong, self.epoch, self.now, deps)
        self.records[call.id] = record
        self.history.append(record)
        if old is not None:
            self._end(old, Outcome.SUPERSEDED)

    def _end(self, record: _Record, outcome: Outcome) -> None:
        """``record`` leaves the turn; posted calls depending on it are cancelled by the
        gateway's cascade (the unposted ones by ``_advance``)."""
        if record.outcome not in STANDING:
            return
        alive, record.outcome = record.outcome in ALIVE, outcome
        if not alive:
            return  # a failed call the model removes or amends: nothing left to cancel
        record.settled_at = self.now
        reason = f"call {record.call.id}, which it depends on, was removed" \
            if outcome == Outcome.REMOVED else "cancelled by the gateway"
        for other in self.history:
            if record in other.deps and other.outcome in ALIVE and other.posted_at is not None:
                self._end(other, Outcome.CANCELLED)
                self._push(self.now, events.Cancelled(other.call.id, reason))

    def _advance(self) -> None:
        """Commits that can finish, calls that can be posted or must be cancelled, now."""
        moved = True
        while moved:
            moved = self._commit_done()
            for record in self.history:
                if record.outcome == Outcome.PENDING and record.posted_at is None:
                    moved = self._try_post(record) or moved

    def _commit_done(self) -> bool:
        waiting = any(r.outcome == Outcome.PENDING for r in self.history
                      if r.epoch <= self.commits_done)
        if self.commits_done < self.epoch and not waiting:
            self.commits_done += 1
            return True
        return False

    def _try_post(self, record: _Record) -> bool:
        gone = next((d for d in record.deps if d.outcome not in ALIVE), None)
        if gone is not None:
            self._end(record, Outcome.CANCELLED)
            self._push(self.now, events.Cancelled(
                record.call.id, f"call {gone.call.id}, which it depends on, was {gone.outcome}"))
            return True
        if any(d.outcome == Outcome.PENDING for d in record.deps) \
                or self.commits_done < record.epoch:
            return False
        record.posted_at = self.now
        self._push(self.now + self.spec.latency(record.call), record)
        return True

    # What is written down -------------------------------------------------------------------

    def _messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system_prompt(self.spec.tools, listing=self.listing)}]
        for index, (role, text) in enumerate(self.transcript.segments):
            message: dict[str, Any] = {"role": role, "content": text}
            if index in self.cut:
                message["interrupted"] = True
            messages.append(message)
        return messages

    def _meta(self) -> dict[str, Any]:
        last = self.spec.chunks[-1][0]
        assert self.answer_at is not None
        versions: Counter[int] = Counter()
        calls, wrong = [], []
        for r in self.history:
            versions[r.call.id] += 1
            calls.append({"id": r.call.id, "version": versions[r.call.id], "name": r.call.name,
                          "gold": r.gold, "wrong": r.wrong is not None,
                          "issued_at": _t(r.issued_at), "posted_at": _t(r.posted_at),
                          "settled_at": _t(r.settled_at), "outcome": str(r.outcome)})
            if r.wrong is not None:
                plan = self.spec.wrong[r.wrong]
                fixed = {Outcome.SUPERSEDED: "amend", Outcome.REMOVED: "remove"}
                wrong.append({"id": r.call.id, "gold": r.gold, "right": plan.right,
                              "wrong": plan.wrong, "arguments": r.call.arguments,
                              "fix": fixed.get(r.outcome, "none")})
        return {"mode": self.mode, "profile": self.profile.name,
                "chunks": len(self.spec.chunks), "last_word_at": _t(last),
                "answer_started_at": _t(self.answer_at), "post_turn_s": _t(self.answer_at - last),
                "steps": self.steps, "interrupts": self.interrupts, "calls": calls,
                "wrong_calls": wrong, **self.spec.meta}


def _t(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Policy:
    """What the model writes each step: the oracle's decision, wrong calls fixed or guessed,
    a think in front."""

    def __init__(self, spec: Spec, mode: Mode, rng: random.Random) -> None:
        self.spec, self.rng = spec, rng
        self.oracle = OracleBackend(spec.task, VirtualClock(), PROFILES["instant"],
                                    parallel=mode == "async")
        self.plans = spec.wrong if mode == "async" else ()
        self.golds = {c.id: c for c in spec.task.calls}
        self.misheard = {c.right: c.wrong for c in spec.task.corrections}
        self.made: dict[int, int] = {}  # call id → the wrong plan it was written for
        self.used: set[int] = set()  # wrong plans issued

    def step(self, sim: _Sim) -> list[Element]:
        decided = self.oracle.decide(Context("", tuple(sim.transcript.segments)))
        actions: list[Element] = [e for e in protocol.parse_all(decided)
                                  if not isinstance(e, AnswerStart)]
        if self.plans:
            actions = self._guess(self._fix(actions, sim), sim)
        think = _think([self._say(a, sim) for a in actions])
        return [Think(think), *actions] if think and not self._was_cut(sim) else actions

    @staticmethod
    def _was_cut(sim: _Sim) -> bool:
        """Whether the model's last message was cut off."""
        mine = [i for i, (role, _) in enumerate(sim.transcript.segments) if role == "assistant"]
        return bool(mine) and mine[-1] in sim.cut

    def identify(self, call: ToolCall, sim: _Sim) -> tuple[int, int | None]:
        """(the gold call ``call`` stands for, the wrong plan it is or None)."""
        plan = self.made.get(call.id)
        if plan is not None and call.arguments == self.plans[plan].arguments:
            self.used.add(plan)
            return self.plans[plan].gold, plan
        return self.gold_of(call, sim), None

    def gold_of(self, call: ToolCall, sim: _Sim) -> int:
        """The first gold call with these arguments (or with a corrected value said wrong)
        that no other live call already is."""
        same = [g.id for g in self.spec.task.calls if g.name == call.name and call.arguments
                in (g.arguments, substitute(g.arguments, self.misheard))]
        if not same:
            raise SimulationError(f"{self.spec.key}: {call.name} {call.arguments} is no gold "
                                  "call")
        taken = {r.gold for r in sim.records.values() if r.outcome in STANDING
                 and r.wrong is None and r.call.id != call.id}
        return next((g for g in same if g not in taken), same[0])

    def _fix(self, actions: list[Element], sim: _Sim) -> list[Element]:
        """Amends and removes of wrong calls whose gold call is issued now (first, so that no
        new call makes them part of a commit), then the new calls, renumbered."""
        highest = max(sim.records, default=0)
        live = {r.wrong: r for r in sim.records.values()
                if r.wrong is not None and r.outcome in STANDING}
        first: list[Element] = []
        new: list[Element] = []
        tail: list[Element] = []
        ids: dict[int, int] = {}
        for action in actions:
            if not (isinstance(action, ToolCall) and action.id > highest):
                (first if isinstance(action, ToolCall | Remove) else tail).append(action)
                continue
            gold = self.gold_of(action, sim)
            plan = next((i for i in live if self.plans[i].gold == gold), None)
            if plan is not None:
                wrong = live.pop(plan).call.id
                if self.plans[plan].fix == "amend" \
                        and all(d <= highest for d in action.dependencies()):
                    ids[action.id] = wrong
                    first.append(ToolCall(wrong, action.name, action.arguments,
                                          action.depends_on))
                    continue
                first.append(Remove(wrong))
            ids[action.id] = highest + 1 + len(new)
            new.append(ToolCall(ids[action.id], action.name, renumber(action.arguments, ids),
                                tuple(ids.get(d, d) for d in action.depends_on)))
        if sim.final and not sim.committed:
            first += [Remove(r.call.id) for r in live.values()]
        return [*first, *new, *tail]

    def _guess(self, actions: list[Element], sim: _Sim) -> list[Element]:
        """One due wrong call, in place of a pause or after the step's calls."""
        if sim.final or any(isinstance(a, Answer) for a in actions):
            return actions
        calls = [a for a in actions if isinstance(a, ToolCall)]
        issuing = {self.gold_of(c, sim) for c in calls if c.id not in sim.records}
        for index, plan in enumerate(self.plans):
            if index in self.used or plan.at > sim.now + 1e-9 or not self._due(plan, sim,
                                                                                issuing):
                continue
            held = {r.gold: r.call.id for r in sim.records.values()
                    if r.outcome in STANDING and r.wrong is None}
            gold = self.golds[plan.gold]
            new_id = max([*sim.records, *(c.id for c in calls)], default=0) + 1
            self.made[new_id] = index
            guess = ToolCall(new_id, gold.name, plan.arguments,
                             tuple(held[d] for d in gold.depends_on))
            return [*(a for a in actions if not isinstance(a, Pause)), guess]
        return actions

    def _due(self, plan: WrongCall, sim: _Sim, issuing: set[int]) -> bool:
        gold = self.golds[plan.gold]
        if plan.gold in issuing or mentions(sim.heard, plan.right):
            return False
        live = [r for r in sim.records.values() if r.outcome in STANDING]
        if any(r.gold == plan.gold for r in live):
            return False
        held = {r.gold for r in live if r.wrong is None}
        needed = [*gold.dependencies(), *self.spec.task.after.get(gold.id, ())]
        if any(d not in held for d in needed):
            return False
        return all(mentions(sim.heard, v) or mentions(sim.seen, v)
                   for v in literals(plan.arguments) if v != plan.wrong)

    def _say(self, action: Element, sim: _Sim) -> str | None:
        """The think's words for one action (templated)."""
        pick = self.rng.choice
        if isinstance(action, Answer):
            return pick(["everything is done, so I answer", "all results are in: answering"])
        if isinstance(action, Remove):
            record = sim.records[action.id]
            if record.wrong is None:
                return f"call {action.id} is no longer right: I drop it"
            plan = self.plans[record.wrong]
            return f"the user said {plan.right}, not {plan.wrong}: I drop call {action.id}"
        if not isinstance(action, ToolCall):
            return None
        tool = action.name.split(".", 1)[-1]
        old = sim.records.get(action.id)
        if old is not None and old.wrong is not None:
            plan = self.plans[old.wrong]
            return f"it is {plan.right}, not {plan.wrong}: I amend call {action.id}"
        if old is not None:
            said = ", ".join(f"{c.right} not {c.wrong}" for c in self.spec.task.corrections)
            return f"the user corrected it ({said}): I amend call {action.id}"
        if action.id in self.made and action.arguments == self.plans[self.made[action.id]] \
                .arguments:
            return f"{pick(['probably', 'likely'])} {self.plans[self.made[action.id]].wrong}"
        shown = [v if len(v) <= 30 else v[:27] + "..." for v in literals(action.arguments)][:2]
        verb = pick(["calling", "I call", "now"])
        return f"{verb} {tool}" + (f" for {', '.join(shown)}" if shown else "")


def _think(parts: list[str | None]) -> str | None:
    said = [p for p in parts if p]
    if not said:
        return None
    text = "; ".join(said)
    return text[0].upper() + text[1:] + "."

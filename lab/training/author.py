"""The model of the training streams, at the runtime's model edge: the scripted oracle
(``backends.oracle``) as the author of a sample. A ``Backend`` like any other, so the agent
runtime drives it, cuts it and records it as it would a real model; it reads only the
``Context`` it is given (and its own notes of what it wrote).

Each step it takes the oracle's decision — the gold calls whose argument values have been heard
or observed, a pause, or the answer once every result is in — and adds what is particular to
training data:

- a short templated ``<think>`` saying what the step does, before every action but a pause,
  and not right after a step that was cut (the transcript shows its last message shorter than
  what it wrote there: the model then acts at once, since a think written again at every chunk
  would starve a long call);
- deliberate wrong early calls (``WrongCall``, async streams only): a gold call issued while
  one of its spoken values is still unsaid, with a plausible wrong value in its place. When the
  oracle issues the gold call, the wrong one is amended (its id re-emitted with the gold
  arguments) or removed (``<remove>``, then the gold call under a new id). One still standing
  when the user has finished is removed first thing, since the commit point would keep it.

It writes at the latency profile's pace: the first token after ``ttft_s``, then the text in
pieces that end at a word, between tags or after an opening tag (what a tokenizer emits at
once: a think cut short ends between words, and the runtime sees an action begun as soon as
its tag is out), each when its last character is out. ``notes`` says, for every call
it wrote (id and arguments), which gold call it stands for and which wrong plan it is.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from agent_worker import protocol
from agent_worker.backends.oracle import OracleBackend, literals, mentions, substitute
from agent_worker.clock import Clock
from agent_worker.model import Context, LatencyProfile
from agent_worker.placeholders import renumber
from agent_worker.protocol import Answer, AnswerStart, Element, Pause, Remove, Think, ToolCall
from lab.training.sources import Mode, Spec, WrongCall, call_key

# A piece ends after an opening tag, between tags, or at the end of a word.
PIECE_END = re.compile(r"<(?:think|tool_call|remove|answer)>|>(?=<|$)|\S(?=\s)")


class SimulationError(Exception):
    """The stream cannot be played to its answer (the message says why)."""


@dataclass(frozen=True)
class Note:
    gold: int  # the gold call it stands for
    wrong: int | None  # the index of the WrongCall it is, if one


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


@dataclass
class Shown:
    """What the transcript shows the model: speech and observations, whether the commit point
    has passed, and its own calls (every one written, the latest version of each id, those
    still standing: not removed, amended over or cancelled)."""

    heard: str = ""
    seen: str = ""
    final: bool = False
    committed: bool = False
    highest: int = 0
    every: list[ToolCall] = field(default_factory=list)
    written: dict[int, ToolCall] = field(default_factory=dict)
    standing: dict[int, ToolCall] = field(default_factory=dict)
    mine: list[str] = field(default_factory=list)  # its messages

    @classmethod
    def read(cls, context: Context) -> Shown:
        shown = cls()
        for role, text in context.segments:
            if role == "user":
                shown._injected(text)
            else:
                shown.mine.append(text)
                for element in protocol.parse_all(text):
                    shown._wrote(element)
        return shown

    def _injected(self, text: str) -> None:
        for item in protocol.read_injected(text):
            if item.kind.endswith("query_update"):
                self.heard += " " + item.text
                self.final = self.final or item.kind == "final_query_update"
            elif item.kind == "observation":
                self.seen += " " + item.text
            elif item.kind == "cancelled" and item.call_id is not None:
                self.standing.pop(item.call_id, None)

    def _wrote(self, element: Element) -> None:
        new_call = isinstance(element, ToolCall) and element.id > self.highest
        if self.final and (new_call or isinstance(element, Pause | Answer)):
            self.committed = True  # the runtime's commit point
        if isinstance(element, ToolCall):
            self.every.append(element)
            self.written[element.id] = self.standing[element.id] = element
            self.highest = max(self.highest, element.id)
        elif isinstance(element, Remove):
            self.standing.pop(element.id, None)


class Author:
    """The training model (see the module docstring)."""

    name = "training-oracle"

    def __init__(self, spec: Spec, mode: Mode, profile: LatencyProfile, clock: Clock,
                 rng: random.Random) -> None:
        self.spec, self.profile, self.clock, self.rng = spec, profile, clock, rng
        self.oracle = OracleBackend(spec.task, clock, profile, parallel=mode == "async")
        self.plans = spec.wrong if mode == "async" else ()
        self.golds = {c.id: c for c in spec.task.calls}
        self.misheard = {c.right: c.wrong for c in spec.task.corrections}
        self.made: dict[int, int] = {}  # call id → the wrong plan it was written for
        self.notes: dict[tuple[int, str], Note] = {}
        self.system = ""  # the system prompt it was given
        self.failure: SimulationError | None = None
        self._written: dict[int, str] = {}  # its message index → the text it wrote there

    async def stream(self, context: Context) -> AsyncGenerator[str, None]:
        self.system = context.system
        try:
            text = self.write(context)
        except SimulationError as error:
            self.failure = error
            raise
        start = self.clock.now() + self.profile.ttft_s
        await self.clock.sleep_until(start)
        done = 0
        for end in [*(m.end() for m in PIECE_END.finditer(text)), len(text)]:
            if end > done:
                await self.clock.sleep_until(start + end * self.profile.seconds_per_char)
                yield text[done:end]
                done = end

    def write(self, context: Context) -> str:
        """The step's whole text, decided at its start."""
        shown = Shown.read(context)
        decided = self.oracle.decide(context)
        actions: list[Element] = [e for e in protocol.parse_all(decided)
                                  if not isinstance(e, AnswerStart)]
        if self.plans:
            actions = self._guess(self._fix(actions, shown), shown)
        think = _think([self._say(a, shown) for a in actions])
        elements = [Think(think), *actions] if think and not self._was_cut(shown) else actions
        self._note(actions, shown)
        text = "".join(render(e) for e in elements)
        self._written[len(shown.mine)] = text
        return text

    def _was_cut(self, shown: Shown) -> bool:
        """Whether its last message in the transcript is shorter than it was written (a step
        cut before anything was complete left no message: the model cannot know of it)."""
        if not shown.mine:
            return False
        last = shown.mine[-1]
        return self._written.get(len(shown.mine) - 1, last) != last

    # Which gold call a call is --------------------------------------------------------------

    def note(self, call: ToolCall) -> Note | None:
        return self.notes.get((call.id, call_key(call.arguments)))

    def _standing(self, shown: Shown) -> list[tuple[ToolCall, Note]]:
        found = [(c, self.note(c)) for _, c in sorted(shown.standing.items())]
        return [(c, n) for c, n in found if n is not None]

    def gold_of(self, call: ToolCall, shown: Shown, claimed: dict[int, int] | None = None,
                ) -> int:
        """The first gold call with these arguments (or with a corrected value said wrong)
        that no other standing call (nor one ``claimed`` in this step) already is."""
        same = [g.id for g in self.spec.task.calls if g.name == call.name and call.arguments
                in (g.arguments, substitute(g.arguments, self.misheard))]
        if not same:
            raise SimulationError(f"{self.spec.key}: {call.name} {call.arguments} is no gold "
                                  "call")
        taken = {n.gold for c, n in self._standing(shown) if n.wrong is None and c.id != call.id}
        taken |= {g for i, g in (claimed or {}).items() if i != call.id}
        return next((g for g in same if g not in taken), same[0])

    def _note(self, actions: list[Element], shown: Shown) -> None:
        claimed: dict[int, int] = {}
        for call in (a for a in actions if isinstance(a, ToolCall)):
            plan = self.made.get(call.id)
            if plan is not None and call.arguments == self.plans[plan].arguments:
                self.notes[(call.id, call_key(call.arguments))] = Note(self.plans[plan].gold,
                                                                       plan)
                continue
            claimed[call.id] = self.gold_of(call, shown, claimed)
            self.notes[(call.id, call_key(call.arguments))] = Note(claimed[call.id], None)

    # Wrong early calls ----------------------------------------------------------------------

    def _fix(self, actions: list[Element], shown: Shown) -> list[Element]:
        """Amends and removes of wrong calls whose gold call is issued now (first, so that no
        new call makes them part of a commit), then the new calls, renumbered."""
        highest = shown.highest
        live = {n.wrong: c for c, n in self._standing(shown) if n.wrong is not None}
        first: list[Element] = []
        new: list[Element] = []
        tail: list[Element] = []
        ids: dict[int, int] = {}
        for action in actions:
            if not (isinstance(action, ToolCall) and action.id > highest):
                (first if isinstance(action, ToolCall | Remove) else tail).append(action)
                continue
            gold = self.gold_of(action, shown)
            plan = next((i for i in live if self.plans[i].gold == gold), None)
            if plan is not None:
                wrong = live.pop(plan).id
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
        if shown.final and not shown.committed:
            first += [Remove(c.id) for c in live.values()]
        return [*first, *new, *tail]

    def _guess(self, actions: list[Element], shown: Shown) -> list[Element]:
        """One due wrong call, in place of a pause or after the step's calls."""
        if shown.final or any(isinstance(a, Answer) for a in actions):
            return actions
        calls = [a for a in actions if isinstance(a, ToolCall)]
        issuing = {self.gold_of(c, shown) for c in calls if c.id not in shown.written}
        used = {n.wrong for c in shown.every if (n := self.note(c)) and n.wrong is not None}
        now = self.clock.now()
        for index, plan in enumerate(self.plans):
            if index in used or plan.at > now + 1e-9 or not self._due(plan, shown, issuing):
                continue
            held = {n.gold: c.id for c, n in self._standing(shown) if n.wrong is None}
            gold = self.golds[plan.gold]
            new_id = max([shown.highest, *(c.id for c in calls)]) + 1
            self.made[new_id] = index
            guess = ToolCall(new_id, gold.name, plan.arguments,
                             tuple(held[d] for d in gold.depends_on))
            return [*(a for a in actions if not isinstance(a, Pause)), guess]
        return actions

    def _due(self, plan: WrongCall, shown: Shown, issuing: set[int]) -> bool:
        gold = self.golds[plan.gold]
        if plan.gold in issuing or mentions(shown.heard, plan.right):
            return False
        live = self._standing(shown)
        if any(n.gold == plan.gold for _, n in live):
            return False
        held = {n.gold for _, n in live if n.wrong is None}
        needed = [*gold.dependencies(), *self.spec.task.after.get(gold.id, ())]
        if any(d not in held for d in needed):
            return False
        return all(mentions(shown.heard, v) or mentions(shown.seen, v)
                   for v in literals(plan.arguments) if v != plan.wrong)

    # Thinks ---------------------------------------------------------------------------------

    def _say(self, action: Element, shown: Shown) -> str | None:
        """The think's words for one action (templated)."""
        pick = self.rng.choice
        if isinstance(action, Answer):
            return pick(["everything is done, so I answer", "all results are in: answering"])
        if isinstance(action, Remove):
            note = self.note(shown.written[action.id])
            if note is None or note.wrong is None:
                return f"call {action.id} is no longer right: I drop it"
            plan = self.plans[note.wrong]
            return f"the user said {plan.right}, not {plan.wrong}: I drop call {action.id}"
        if not isinstance(action, ToolCall):
            return None
        tool = action.name.split(".", 1)[-1]
        old = shown.written.get(action.id)
        old_note = self.note(old) if old is not None else None
        if old_note is not None and old_note.wrong is not None:
            plan = self.plans[old_note.wrong]
            return f"it is {plan.right}, not {plan.wrong}: I amend call {action.id}"
        if old is not None:
            said = ", ".join(f"{c.right} not {c.wrong}" for c in self.spec.task.corrections)
            return f"the user corrected it ({said}): I amend call {action.id}"
        plan_index = self.made.get(action.id)
        if plan_index is not None and action.arguments == self.plans[plan_index].arguments:
            return f"{pick(['probably', 'likely'])} {self.plans[plan_index].wrong}"
        values = [v if len(v) <= 30 else v[:27] + "..." for v in literals(action.arguments)][:2]
        verb = pick(["calling", "I call", "now"])
        return f"{verb} {tool}" + (f" for {', '.join(values)}" if values else "")


def _think(parts: list[str | None]) -> str | None:
    said = [p for p in parts if p]
    if not said:
        return None
    text = "; ".join(said)
    return text[0].upper() + text[1:] + "."

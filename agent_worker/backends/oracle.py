"""The scripted oracle: issues a task's gold calls at the earliest moment their inputs have been
heard, and costs a declared latency profile instead of a real model's time
(docs/architecture.md#agent-worker).

A gold call is ready once every literal argument value (strings and numbers; placeholders
aside) occurs, case-insensitively and as a whole token (``mentions``), in what the user has
said so far or in a result already observed — and, at the final update, unconditionally (a
value said in other words, "two" for 2, is known once the utterance is complete). A task may
narrow that last rule to the values it lists in ``at_final``: the others (values only a result
shows) then wait for the result even after the user has finished. Its dependencies must have
been issued; their results are left to the gateway's placeholders; ``after`` names calls that
must merely have been issued first (the order of a task's writes). Ready calls are issued
together, numbered after the highest id so far, with placeholders renumbered. When nothing is
left to issue: the gold answer once the user has finished and every call has its observation,
else ``<pause/>``.

Corrections (``Correction``: the user says a wrong value, then the right one): while the wrong
value has been heard and the right one not yet, the oracle believes the wrong one and issues
gold calls with it in place of the right value (and amends calls it had issued with the right
one, known from a result); once the right value is heard, each call it issued with the wrong
value is amended (re-emitted under its id with the gold arguments). The order of the calls in
``ordered`` (a task's writes) is kept: should one of them leave the turn (an amend the gateway
refused, a conflict) while a call that must come after it is live, that call is removed
before the user has finished, and both are issued again in order.

The oracle reads only the transcript (what any model would see), so it stays right across
interruptions: a call it was cut off while writing is simply issued again. Sequential mode
(the synchronous baseline's model): one call per step, only once every earlier call has been
observed and its dependencies' results are in.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_worker import placeholders, protocol
from agent_worker.clock import Clock
from agent_worker.model import Context, LatencyProfile
from agent_worker.placeholders import renumber
from agent_worker.protocol import ToolCall

PIECE_CHARS = 16  # emitted in pieces of 4 tokens


@dataclass(frozen=True)
class Correction:
    """The user first says ``wrong`` where ``right`` belongs, and corrects it later."""

    wrong: str
    right: str


@dataclass(frozen=True)
class OracleTask:
    utterance: str
    calls: tuple[ToolCall, ...]
    answer: str
    name: str = "task"
    at_final: frozenset[str] | None = None  # None: the final update makes every value known
    after: dict[int, tuple[int, ...]] = field(default_factory=dict)  # gold id → issued first
    corrections: tuple[Correction, ...] = ()
    ordered: frozenset[int] = frozenset()  # gold ids whose place in ``after`` must hold

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OracleTask:
        calls = tuple(protocol.ToolCall(int(c["id"]), str(c["name"]), dict(c.get("arguments", {})),
                                        tuple(int(d) for d in c.get("depends_on", [])))
                      for c in data["calls"])
        at_final = data.get("at_final")
        return cls(str(data["utterance"]), calls, str(data.get("answer", "Done.")),
                   str(data.get("name", "task")),
                   at_final=None if at_final is None else frozenset(str(v) for v in at_final),
                   after={int(k): tuple(int(d) for d in v)
                          for k, v in data.get("after", {}).items()},
                   corrections=tuple(Correction(str(c["wrong"]), str(c["right"]))
                                     for c in data.get("corrections", [])),
                   ordered=frozenset(int(i) for i in data.get("ordered", [])))

    @classmethod
    def load(cls, path: Path) -> OracleTask:
        return cls.from_json(json.loads(path.read_text()))


def mention_at(text: str, value: str, start: int = 0) -> int:
    """Where ``value`` first occurs in ``text`` from ``start``, case-insensitively, as a whole
    token: not glued to a letter or digit on a side where the value itself starts or ends with
    one ("no" is not in "know", 2 is not in 12). -1 when nowhere."""
    text, value = text.lower(), value.lower()
    at = text.find(value, start)
    while at >= 0:
        end = at + len(value)
        glued_before = at > 0 and text[at - 1].isalnum() and value[:1].isalnum()
        glued_after = end < len(text) and text[end].isalnum() and value[-1:].isalnum()
        if not (glued_before or glued_after):
            return at
        at = text.find(value, at + 1)
    return -1


def mentions(text: str, value: str) -> bool:
    """Whether ``value`` occurs in ``text`` as a whole token (see ``mention_at``)."""
    return mention_at(text, value) >= 0


def substitute(value: Any, swaps: dict[str, str]) -> Any:
    """``value`` with every string equal to a key of ``swaps`` replaced by its value."""
    return placeholders.map_strings(value, lambda string: swaps.get(string, string))


def literals(value: Any) -> Iterator[str]:
    """The literal values of arguments a model must know: strings (placeholders aside) and
    numbers, in order."""
    for leaf in placeholders.leaves(value):
        if isinstance(leaf, str) and placeholders.parse(leaf) is None:
            yield leaf
        elif isinstance(leaf, int | float) and not isinstance(leaf, bool):
            yield str(leaf)


@dataclass
class _Seen:
    """What the transcript shows: speech, observations, the oracle's own live calls."""

    heard: str = ""
    final: bool = False
    observed: dict[int, str] = field(default_factory=dict)
    issued: dict[int, ToolCall] = field(default_factory=dict)  # live, by model id
    highest: int = 0
    results: str = ""  # the observations still standing, one text

    @classmethod
    def read(cls, context: Context) -> _Seen:
        seen = cls()
        for role, text in context.segments:  # in order: an amend waits for its new result
            if role == "user":
                seen._injected(text)
            else:
                seen._wrote(text)
        seen.results = "\n".join(seen.observed.values())
        return seen

    def _injected(self, text: str) -> None:
        for item in protocol.read_injected(text):
            if item.kind in ("partial_query_update", "final_query_update"):
                self.heard += " " + item.text
                self.final = self.final or item.kind == "final_query_update"
            elif item.kind == "observation" and item.call_id is not None:
                self.observed[item.call_id] = item.text
            elif item.kind == "cancelled" and item.call_id is not None:
                self.issued.pop(item.call_id, None)

    def _wrote(self, text: str) -> None:
        for element in protocol.parse_all(text):
            if isinstance(element, ToolCall):
                self.issued[element.id] = element
                self.highest = max(self.highest, element.id)
                self.observed.pop(element.id, None)
            elif isinstance(element, protocol.Remove):
                self.issued.pop(element.id, None)

    def said(self, value: str) -> bool:
        return mentions(self.heard, value)

    def knows(self, value: str, at_final: frozenset[str] | None) -> bool:
        if self.final and (at_final is None or value in at_final):
            return True
        return self.said(value) or mentions(self.results, value)


@dataclass
class OracleBackend:
    task: OracleTask
    clock: Clock
    profile: LatencyProfile
    parallel: bool = True
    name: str = "oracle"

    async def stream(self, context: Context) -> AsyncGenerator[str, None]:
        text = self.decide(context)
        await self.clock.sleep(self.profile.ttft_s)
        for start in range(0, len(text), PIECE_CHARS):
            piece = text[start:start + PIECE_CHARS]
            await self.clock.sleep(len(piece) * self.profile.seconds_per_char)
            yield piece

    def decide(self, context: Context) -> str:
        seen = _Seen.read(context)
        belief = {c.right: c.wrong for c in self.task.corrections
                  if seen.said(c.wrong) and not seen.said(c.right)}
        matched, stale = self._match(seen, belief)
        misplaced = [matched[g.id] for g in self.task.calls if g.id in matched
                     and any(a in self.task.ordered and a not in matched
                             for a in self.task.after.get(g.id, ()))]
        if misplaced and not seen.final:
            return "".join(f"<remove>{i}</remove>" for i in misplaced)
        calls = [ToolCall(matched[gold.id], gold.name,
                          renumber(substitute(gold.arguments, belief), matched),
                          tuple(matched[d] for d in gold.depends_on if d in matched))
                 for gold in self.task.calls if gold.id in stale]  # amends: same ids
        ids, next_id = dict(matched), seen.highest + 1
        for gold in self._ready(seen, matched, belief):
            ids[gold.id] = next_id
            calls.append(ToolCall(next_id, gold.name,
                                  renumber(substitute(gold.arguments, belief), ids),
                                  tuple(ids[d] for d in gold.depends_on)))
            next_id += 1
        if calls:
            return "".join(protocol.render_tool_call(c) for c in calls)
        waiting = any(i not in seen.observed for i in seen.issued)
        if seen.final and len(matched) == len(self.task.calls) and not waiting:
            return f"<answer>{self.task.answer}</answer>"
        return "<pause/>"

    def _match(self, seen: _Seen, belief: dict[str, str]) -> tuple[dict[int, int], set[int]]:
        """Gold id → model id of the live issued call that is that gold call, and the gold
        ids whose call carries a wrong value the user has since corrected."""
        misheard = {c.right: c.wrong for c in self.task.corrections}
        matched: dict[int, int] = {}
        stale: set[int] = set()
        for model_id, call in sorted(seen.issued.items()):
            for gold in self.task.calls:
                if gold.id in matched or gold.name != call.name:
                    continue
                believed = renumber(substitute(gold.arguments, belief), matched)
                wrong = renumber(substitute(gold.arguments, misheard), matched)
                if call.arguments in (believed, renumber(gold.arguments, matched), wrong):
                    matched[gold.id] = model_id
                    if call.arguments != believed:
                        stale.add(gold.id)
                    break
        return matched, stale

    def _ready(self, seen: _Seen, matched: dict[int, int],
               belief: dict[str, str]) -> list[ToolCall]:
        ready: list[ToolCall] = []
        for gold in self.task.calls:
            if gold.id in matched:
                continue
            deps = gold.dependencies()
            issued = {*matched, *(r.id for r in ready)}
            if any(d not in issued for d in (*deps, *self.task.after.get(gold.id, ()))):
                continue
            arguments = substitute(gold.arguments, belief)
            if not all(seen.knows(v, self.task.at_final) for v in literals(arguments)):
                continue
            if not self.parallel:
                in_flight = any(i not in seen.observed for i in seen.issued)
                if in_flight or any(d not in matched for d in deps):
                    break
                return [gold]
            ready.append(gold)
        return ready

"""The scripted oracle: issues a task's gold calls at the earliest moment their inputs have been
heard, and costs a declared latency profile instead of a real model's time (DESIGN §6–7).

A gold call is ready once every literal argument value (strings and numbers; placeholders
aside) occurs, case-insensitively, in what the user has said so far or in a result already
observed — and, at the final update, unconditionally (a value said in other words, "two" for
2, is known once the utterance is complete). Its dependencies must have been issued; their
results are left to the gateway's placeholders. Ready calls are issued together, numbered
after the highest id so far, with placeholders renumbered. When nothing is left to issue: the
gold answer once the user has finished and every call has its observation, else ``<pause/>``.

The oracle reads only the transcript (what any model would see), so it stays right across
interruptions: a call it was cut off while writing is simply issued again. Sequential mode
(the synchronous baseline's model): one call per step, only once every earlier call has been
observed and its dependencies' results are in.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_worker import protocol
from agent_worker.clock import Clock
from agent_worker.model import Context, LatencyProfile
from agent_worker.protocol import ToolCall

_PLACEHOLDER = re.compile(r"^\$(?P<call>[0-9]+)(?P<path>(?:\.[^.]+)*)$")
PIECE_CHARS = 16  # emitted in pieces of 4 tokens


@dataclass(frozen=True)
class OracleTask:
    utterance: str
    calls: tuple[ToolCall, ...]
    answer: str
    name: str = "task"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OracleTask:
        calls = tuple(protocol.ToolCall(int(c["id"]), str(c["name"]), dict(c.get("arguments", {})),
                                        tuple(int(d) for d in c.get("depends_on", [])))
                      for c in data["calls"])
        return cls(str(data["utterance"]), calls, str(data.get("answer", "Done.")),
                   str(data.get("name", "task")))

    @classmethod
    def load(cls, path: Path) -> OracleTask:
        return cls.from_json(json.loads(path.read_text()))


def _literals(value: Any) -> Iterator[str]:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, str):
        if not (_PLACEHOLDER.match(value) and not value.startswith("$$")):
            yield value
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _literals(item)
    elif isinstance(value, list):
        for item in value:
            yield from _literals(item)


def _renumber(value: Any, ids: dict[int, int]) -> Any:
    if isinstance(value, str):
        match = _PLACEHOLDER.match(value) if not value.startswith("$$") else None
        if match and int(match["call"]) in ids:
            return f"${ids[int(match['call'])]}{match['path']}"
        return value
    if isinstance(value, dict):
        return {k: _renumber(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_renumber(v, ids) for v in value]
    return value


@dataclass
class _Seen:
    """What the transcript shows: speech, observations, the oracle's own live calls."""

    heard: str = ""
    final: bool = False
    observed: dict[int, str] = field(default_factory=dict)
    issued: dict[int, ToolCall] = field(default_factory=dict)  # live, by model id
    highest: int = 0

    @classmethod
    def read(cls, context: Context) -> _Seen:
        seen = cls()
        for role, text in context.segments:  # in order: an amend waits for its new result
            if role == "user":
                seen._injected(text)
            else:
                seen._wrote(text)
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

    def knows(self, value: str) -> bool:
        if self.final:
            return True
        value = value.lower()
        return value in self.heard.lower() or any(value in o.lower()
                                                  for o in self.observed.values())


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
        per_char = (0.0 if self.profile.tokens_per_s == float("inf")
                    else 1.0 / (4 * self.profile.tokens_per_s))
        for start in range(0, len(text), PIECE_CHARS):
            piece = text[start:start + PIECE_CHARS]
            await self.clock.sleep(len(piece) * per_char)
            yield piece

    def decide(self, context: Context) -> str:
        seen = _Seen.read(context)
        matched = self._match(seen)
        ready = self._ready(seen, matched)
        if ready:
            calls, ids, next_id = [], dict(matched), seen.highest + 1
            for gold in ready:
                ids[gold.id] = next_id
                calls.append(ToolCall(next_id, gold.name, _renumber(gold.arguments, ids),
                                      tuple(ids[d] for d in gold.depends_on)))
                next_id += 1
            return "".join(protocol.render_tool_call(c) for c in calls)
        waiting = any(i not in seen.observed for i in seen.issued)
        if seen.final and len(matched) == len(self.task.calls) and not waiting:
            return f"<answer>{self.task.answer}</answer>"
        return "<pause/>"

    def _match(self, seen: _Seen) -> dict[int, int]:
        """Gold id → model id of the live issued call that is that gold call."""
        matched: dict[int, int] = {}
        for model_id, call in sorted(seen.issued.items()):
            for gold in self.task.calls:
                if gold.id in matched or gold.name != call.name:
                    continue
                if _renumber(gold.arguments, matched) == call.arguments:
                    matched[gold.id] = model_id
                    break
        return matched

    def _ready(self, seen: _Seen, matched: dict[int, int]) -> list[ToolCall]:
        ready: list[ToolCall] = []
        for gold in self.task.calls:
            if gold.id in matched:
                continue
            deps = gold.dependencies()
            if any(d not in matched and d not in {r.id for r in ready} for d in deps):
                continue
            if not all(seen.knows(v) for v in _literals(gold.arguments)):
                continue
            if not self.parallel:
                in_flight = any(i not in seen.observed for i in seen.issued)
                if in_flight or any(d not in matched for d in deps):
                    break
                return [gold]
            ready.append(gold)
        return ready

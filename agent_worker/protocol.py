"""The tagged stream of the speculative protocol (docs/architecture.md#agent-worker) as data, an
incremental parser of what the model writes, and the rendering of what the runtime injects.

The model writes, per step, an optional ``<think>…</think>`` and then its action: one or more
``<tool_call>{"id": 3, "name": …, "arguments": {…}, "depends_on": [1]}</tool_call>``,
``<remove>3</remove>``, ``<pause/>`` or ``<answer>…</answer>``. The runtime injects
``<partial_query_update>``, ``<final_query_update>``, ``<observation id="3">``,
``<cancelled id="3">``, ``<error>`` and closes a think cut short by new input with
``</think_interrupted>``.

The parser is fed text deltas and emits each element as soon as its closing tag has arrived
(``AnswerStart`` already at ``<answer>``, so the turn can commit while the answer streams). It
never raises on model output: anything it cannot accept becomes a ``Malformed`` element, whose
message the runtime sends back in ``<error>``. A stream that ends inside a tag leaves
``incomplete`` set and ``complete_end`` at the end of the last complete element, so an
interrupted generation can be cut back to what the model actually finished.

Ids: the model numbers calls from 1, each new id greater than every id before it; re-emitting
an id amends that call. ``CallBook`` holds the ids so far and checks an action against them and
the tool list (unknown tool, non-growing id, unknown dependency, removed or committed call).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from agent_worker import placeholders

THINK_INTERRUPTED = "</think_interrupted>"
_CALL_KEYS = frozenset({"id", "name", "arguments", "depends_on"})
_LONGEST_TAG = 32  # an opening tag longer than this without '>' is not one of ours


@dataclass(frozen=True)
class Think:
    text: str
    interrupted: bool = False


@dataclass(frozen=True)
class ToolCall:
    id: int
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[int, ...] = ()

    def dependencies(self) -> tuple[int, ...]:
        """Explicit ``depends_on`` and the calls named by placeholders, without repeats."""
        named = placeholders.references(self.arguments)
        return tuple(dict.fromkeys([*self.depends_on, *named]))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "name": self.name, "arguments": self.arguments}
        if self.depends_on:
            body["depends_on"] = list(self.depends_on)
        return body


@dataclass(frozen=True)
class Remove:
    id: int


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class AnswerStart:
    """``<answer>`` has been opened: the commit point may be reached before the text ends."""


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Malformed:
    message: str


Element = Think | ToolCall | Remove | Pause | AnswerStart | Answer | Malformed


def _as_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    return None


def parse_tool_call(body: str) -> ToolCall | Malformed:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        return Malformed(f"<tool_call> does not hold valid JSON ({error.msg} at character "
                         f"{error.pos})")
    if not isinstance(data, dict):
        return Malformed("<tool_call> must hold a JSON object")
    unknown = sorted(set(data) - _CALL_KEYS)
    if unknown:
        return Malformed(f"<tool_call> has an unknown field {unknown[0]!r}; the fields are "
                         "id, name, arguments, depends_on")
    call_id, name = _as_id(data.get("id")), data.get("name")
    arguments, depends = data.get("arguments", {}), data.get("depends_on", [])
    if call_id is None:
        return Malformed("<tool_call> needs an integer \"id\" of 1 or more")
    if not isinstance(name, str) or not name:
        return Malformed(f"<tool_call> {call_id} needs a tool \"name\"")
    if not isinstance(arguments, dict):
        return Malformed(f"<tool_call> {call_id}: \"arguments\" must be an object")
    deps = [_as_id(d) for d in depends] if isinstance(depends, list) else [None]
    if any(d is None for d in deps):
        return Malformed(f"<tool_call> {call_id}: \"depends_on\" must be a list of call ids")
    return ToolCall(call_id, name, arguments, tuple(d for d in deps if d is not None))


def _parse_remove(body: str) -> Remove | Malformed:
    call_id = _as_id(body.strip())
    if call_id is None:
        return Malformed(f"<remove> must hold one call id, got {body!r}")
    return Remove(call_id)


# Opening tags the model may write: tag → name of the element it opens (None: complete at once).
_OPENERS: dict[str, str | None] = {
    "<think>": "think", "<tool_call>": "tool_call", "<remove>": "remove",
    "<answer>": "answer", "<pause>": "pause", "<pause/>": None, "<pause />": None,
}
_INJECTED = ("partial_query_update", "final_query_update", "observation", "cancelled", "error")


def _unknown_tag(tag: str) -> Malformed:
    name = tag.strip("</>").split()[0] if tag.strip("</>") else tag
    if name in _INJECTED or name == "think_interrupted":
        return Malformed(f"<{name}> is written by the runtime, not by the model")
    return Malformed(f"unknown tag {tag!r}; write <think>, <tool_call>, <remove>, <pause/> "
                     "or <answer>")


@dataclass
class StreamParser:
    """Incremental parser of one generation. ``book``, when given, checks every action and
    records the accepted ones (so a later action in the same stream is checked against it)."""

    book: CallBook | None = None
    text: str = ""
    complete_end: int = 0
    incomplete: str | None = None
    broken: bool = False
    _cursor: int = 0
    _content_start: int = 0

    def feed(self, delta: str) -> list[Element]:
        self.text += delta
        out: list[Element] = []
        while not self.broken:
            element = self._next()
            if element is None:
                break
            if isinstance(element, Malformed):
                self.broken = True
            out.append(self._checked(element))
        return out

    def finish(self) -> Malformed | None:
        """End of the stream: a Malformed naming what was left unfinished, if anything."""
        if self.broken:
            return None
        rest = self.text[self._cursor:].strip()
        if self.incomplete is not None:
            return Malformed(f"the output stopped inside <{self.incomplete}>")
        if rest:
            return Malformed(f"the output stopped inside a tag: {rest[:40]!r}")
        return None

    def _checked(self, element: Element) -> Element:
        if self.book is None or not isinstance(element, ToolCall | Remove):
            return element
        problem = self.book.check(element)
        if problem is not None:
            self.broken = True
            return Malformed(problem)
        self.book.record(element)
        return element

    def _next(self) -> Element | None:
        if self.incomplete is not None:
            return self._close()
        text, at = self.text, self._cursor
        while at < len(text) and text[at].isspace():
            at += 1
        self._cursor = at
        if at == len(text):
            return None
        if text[at] != "<":
            end = text.find("<", at)
            stray = text[at:] if end < 0 else text[at:end]
            return Malformed(f"text outside a tag: {stray[:60]!r}")
        gt = text.find(">", at)
        if gt < 0:
            if len(text) - at > _LONGEST_TAG:
                return Malformed(f"unterminated tag {text[at:at + 40]!r}")
            return None
        tag = text[at:gt + 1]
        if "<" in tag[1:] or len(tag) > _LONGEST_TAG:
            return Malformed(f"unterminated tag {text[at:at + 40]!r}")
        if tag not in _OPENERS:
            return _unknown_tag(tag)
        self._cursor = gt + 1
        opened = _OPENERS[tag]
        if opened is None:
            self.complete_end = self._cursor
            return Pause()
        self.incomplete, self._content_start = opened, gt + 1
        return AnswerStart() if opened == "answer" else self._close()

    def _close(self) -> Element | None:
        name = self.incomplete
        assert name is not None
        closers = [f"</{name}>"] + ([THINK_INTERRUPTED] if name == "think" else [])
        found = [(self.text.find(c, self._content_start), c) for c in closers]
        hits = sorted((i, c) for i, c in found if i >= 0)
        if not hits:
            return None
        index, closer = hits[0]
        body = self.text[self._content_start:index]
        self._cursor = self.complete_end = index + len(closer)
        self.incomplete = None
        return _element(name, body, interrupted=closer == THINK_INTERRUPTED)


def _element(name: str, body: str, *, interrupted: bool) -> Element:
    if name == "think":
        return Think(body, interrupted=interrupted)
    if name == "tool_call":
        return parse_tool_call(body)
    if name == "remove":
        return _parse_remove(body)
    if name == "answer":
        return Answer(body.strip())
    if body.strip():
        return Malformed("<pause> takes no content; write <pause/>")
    return Pause()


def parse_all(text: str, book: CallBook | None = None) -> list[Element]:
    """Every element of a finished text (plus a Malformed for an unfinished tail)."""
    parser = StreamParser(book=book)
    elements = parser.feed(text)
    tail = parser.finish()
    return [*elements, tail] if tail is not None else elements


@dataclass
class CallBook:
    """The model's call ids so far: which were issued, removed, or frozen by a commit."""

    tools: Collection[str]
    issued: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    frozen: set[int] = field(default_factory=set)

    @property
    def highest(self) -> int:
        return max(self.issued, default=0)

    def check(self, action: ToolCall | Remove) -> str | None:
        """Why the action cannot be accepted, or None."""
        if isinstance(action, Remove):
            return self._check_target(action.id, "remove")
        if action.name not in self.tools:
            return f"unknown tool {action.name!r} in call {action.id}"
        if action.id in self.issued:
            problem = self._check_target(action.id, "amend")
            if problem:
                return problem
        elif action.id <= self.highest:
            return (f"call id {action.id} is not new and was never issued: a new call needs an "
                    f"id greater than {self.highest}")
        for dep in action.dependencies():
            if dep == action.id:
                return f"call {action.id} cannot depend on itself"
            if dep not in self.issued or dep in self.removed:
                return f"call {action.id} depends on call {dep}, which is not a live call"
        return None

    def _check_target(self, call_id: int, verb: str) -> str | None:
        if call_id not in self.issued:
            return f"cannot {verb} call {call_id}: it was never issued"
        if call_id in self.removed:
            return f"cannot {verb} call {call_id}: it was removed"
        if call_id in self.frozen:
            return f"cannot {verb} call {call_id}: its turn is committed"
        return None

    def record(self, action: ToolCall | Remove) -> None:
        if isinstance(action, Remove):
            self.removed.add(action.id)
        else:
            self.issued.add(action.id)
            self.removed.discard(action.id)


# What the runtime injects ---------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def render_update(text: str, *, final: bool) -> str:
    tag = "final_query_update" if final else "partial_query_update"
    return f"<{tag}>{text}</{tag}>"


def render_observation(call_id: int, payload: Any) -> str:
    return f'<observation id="{call_id}">{_json(payload)}</observation>'


def render_cancelled(call_id: int, reason: str) -> str:
    return f'<cancelled id="{call_id}">{reason}</cancelled>'


def render_error(message: str) -> str:
    return f"<error>{message}</error>"


def render_tool_call(call: ToolCall) -> str:
    return f"<tool_call>{_json(call.to_json())}</tool_call>"


@dataclass(frozen=True)
class Injected:
    """One injected element read back from a transcript (for backends that read the stream)."""

    kind: str  # partial_query_update, final_query_update, observation, cancelled, error
    text: str
    call_id: int | None = None


_INJECTED_RE = re.compile(
    r"<(?P<tag>partial_query_update|final_query_update|error)>(?P<body>.*?)</(?P=tag)>"
    r'|<(?P<itag>observation|cancelled) id="(?P<id>\d+)">(?P<ibody>.*?)</(?P=itag)>',
    re.DOTALL)


def read_injected(text: str) -> list[Injected]:
    return [Injected(m["tag"], m["body"]) if m["tag"] else
            Injected(m["itag"], m["ibody"], int(m["id"])) for m in _INJECTED_RE.finditer(text)]

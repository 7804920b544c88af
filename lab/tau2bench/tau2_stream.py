"""A τ² task as a streaming replay (docs/architecture.md#benchmarks): what the user says, and
the oracle's task.

**The utterance.** τ²'s user instructions, in the user's own voice and as one spoken text: the
known info ("You are Yusuf Rossi in zip code 19122."), then the reason for the call, then —
from the unknown info and the task instructions, which mostly say how the user behaves — only
the sentences that carry an argument value of a gold action not said yet (a value τ² gives the
user there, e.g. "say that you want to pay with the gift card"). Second person becomes first
("You are" → "I am", "your" → "my"), unless that would change a value. Its words are spoken at
150 words/min and delivered in ~0.5 s chunks (``agent_worker.inputs``).

**The oracle's task.** τ²'s gold actions, each as the call ``<domain>.<tool>`` with its gold
arguments. Every literal value of a call is known from one of: the utterance (once the chunk
that completes it has been heard), the result of another gold call whose τ² output shows it
(a read, or a reversible write, whose held result the agent sees; a sensitive write's result
exists only after commit), or nowhere — such values (a cancellation reason, "USA") are known
at the final update. The producer may come later in τ²'s list (τ²'s gold order is not always
the order of discovery), but never across a write the call must precede. A value with several
sources is known at whichever comes first; the call depends on the producers it waited for
(chosen by ``lab.tau2bench.ideal``). Writes keep τ²'s order: a write is issued only after
every earlier gold call, and a call after a write only after that write
(``OracleTask.after``), so speculation never reorders what τ²'s own replay did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent_worker import inputs
from agent_worker.backends.oracle import Correction, OracleTask, literals, mentions
from agent_worker.protocol import ToolCall
from lab.tau2bench import tau2_corrections
from lab.tau2bench.gold import GoldStep, gold_values

ANSWER = "All set: I have taken care of everything you asked for."

# Second person → first person, most specific first (word-bounded, case kept at the start).
_VOICE = [(r"\byou are\b", "I am"), (r"\byou were\b", "I was"), (r"\byou're\b", "I'm"),
          (r"\byou've\b", "I've"), (r"\byou'd\b", "I'd"), (r"\byou'll\b", "I'll"),
          (r"\byourself\b", "myself"), (r"\byours\b", "mine"), (r"\byour\b", "my"),
          (r"\b(to|for|with|told|tell|tells|ask|asks|give|gives|offer|offers|let|help|helps|"
           r"send|sends|call|calls|contact|remind|than|assist) you\b", r"\1 me"),
          (r"\byou\b", "I")]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def first_person(text: str) -> str:
    """The instructions as the user would say them ("You are" → "I am", "your" → "my")."""
    for pattern, replacement in _VOICE:
        text = re.sub(pattern, _Cased(replacement), text, flags=re.IGNORECASE)
    return text


@dataclass(frozen=True)
class _Cased:
    """A replacement that keeps a capital at the start ("Your" → "My")."""

    replacement: str

    def __call__(self, match: re.Match[str]) -> str:
        said = match.expand(self.replacement)
        return said[:1].upper() + said[1:] if match.group(0)[:1].isupper() else said


def _parts(instructions: Any) -> tuple[list[str], list[str]]:
    """(always said, said only where they carry a needed value)."""
    if isinstance(instructions, str):
        return [instructions], []
    said = [instructions.known_info, instructions.reason_for_call]
    extra = [instructions.unknown_info, instructions.task_instructions]
    return [p for p in said if p], [p for p in extra if p]


def utterance(instructions: Any, values: Iterable[str]) -> str:
    """The spoken text of a task (see the module docstring), whitespace normalized."""
    values = list(dict.fromkeys(values))
    always, extra = _parts(instructions)
    said = " ".join(always)
    for sentence in (s for part in extra for s in _SENTENCE_END.split(part) if s.strip()):
        if any(mentions(sentence, v) and not mentions(said, v) for v in values):
            said += " " + sentence
    spoken = first_person(said)
    if any(mentions(said, v) and not mentions(spoken, v) for v in values):
        spoken = said  # the voice change touched a value: keep τ²'s words
    return " ".join(spoken.replace("<", " ").replace(">", " ").split())


Chunks = tuple[tuple[float, str], ...]


def chunks_of(text: str) -> Chunks:
    """(delivery time, words) per ~0.5 s chunk of the text spoken at 150 words/min."""
    return tuple(inputs.chunk_words(inputs.words_from_text(text)))


def heard_at(chunks: Chunks, value: str) -> float | None:
    """When the user has said ``value``: the delivery of the chunk that completes it."""
    heard = ""
    for at, text in chunks:
        heard += " " + text
        if mentions(heard, value):
            return at
    return None


@dataclass(frozen=True)
class Source:
    """Where one argument value of a call is known from (neither: at the final update)."""

    value: str
    heard_at: float | None
    producers: tuple[int, ...]  # gold ids of the calls whose result shows it


@dataclass(frozen=True)
class StreamCall:
    call: ToolCall  # gold id, ``<domain>.<tool>``, gold arguments (no depends_on yet)
    effect: str
    sources: tuple[Source, ...]
    after: tuple[int, ...]  # gold ids issued before it (the order of writes)


@dataclass(frozen=True)
class StreamTask:
    domain: str
    task_id: str
    utterance: str
    chunks: Chunks
    calls: tuple[StreamCall, ...]
    answer: str = ANSWER
    correction: Correction | None = None
    corrected_call: int | None = None  # gold id whose argument is said wrong first
    corrected_kind: str = ""  # "write", "read a write needs" or "read"
    note: str = ""  # why a correction stream has no correction

    @property
    def last_word_at(self) -> float:
        return self.chunks[-1][0] if self.chunks else 0.0

    @property
    def words(self) -> int:
        return len(self.utterance.split())

    def oracle(self, depends: Mapping[int, tuple[int, ...]] | None = None,
               late: frozenset[str] = frozenset()) -> OracleTask:
        """The oracle's task; ``depends``: gold id → the producers it waits for, ``late``:
        values taken at the final update although a result shows them (see ``ideal``)."""
        depends = depends or {}
        at_final = frozenset(s.value for c in self.calls for s in c.sources
                             if s.heard_at is None and not s.producers) | late
        calls = tuple(replace(c.call, depends_on=depends.get(c.call.id, ()))
                      for c in self.calls)
        return OracleTask(self.utterance, calls, self.answer,
                          name=f"{self.domain}-{self.task_id}", at_final=at_final,
                          after={c.call.id: c.after for c in self.calls if c.after},
                          ordered=frozenset(c.call.id for c in self.calls if c.effect != "safe"),
                          corrections=(self.correction,) if self.correction else ())


def stream_calls(domain: str, steps: Sequence[GoldStep], chunks: Chunks,
                 ) -> tuple[StreamCall, ...]:
    """The gold calls with the provenance of each value and the write order."""
    calls: list[StreamCall] = []
    for number, step in enumerate(steps, 1):
        sources = tuple(Source(value, heard_at(chunks, value),
                               _producers(value, number, steps))
                        for value in dict.fromkeys(literals(step.arguments)))
        after = tuple(n for n, earlier in enumerate(steps[:number - 1], 1)
                      if step.effect != "safe" or earlier.effect != "safe")
        calls.append(StreamCall(ToolCall(number, f"{domain}.{step.name}",
                                         dict(step.arguments)), step.effect, sources, after))
    return tuple(calls)


def _producers(value: str, number: int, steps: Sequence[GoldStep]) -> tuple[int, ...]:
    """Calls whose result shows ``value`` and that call ``number`` may wait for: any earlier
    one, and later reads with no write between (a write must wait for the call)."""
    found = []
    for n, step in enumerate(steps, 1):
        if n > number and step.effect != "safe":
            break
        if n != number and step.shows_result and mentions(step.shown, value):
            found.append(n)
    return tuple(found)


def build(domain: str, task_id: str, instructions: Any, steps: Sequence[GoldStep],
          corrections: bool = False) -> StreamTask:
    """The streaming replay of one τ² task; with ``corrections``, a wrong value said first
    and corrected a few words later (``tau2_corrections``)."""
    text = utterance(instructions, gold_values(steps))
    injected = tau2_corrections.inject(domain, text, steps) if corrections else None
    if injected is None or isinstance(injected, str):
        chunks = chunks_of(text)
        return StreamTask(domain, task_id, text, chunks, stream_calls(domain, steps, chunks),
                          note=injected or "")
    chunks = chunks_of(injected.text)
    return StreamTask(domain, task_id, injected.text, chunks,
                      stream_calls(domain, steps, chunks), correction=injected.correction,
                      corrected_call=injected.call, corrected_kind=injected.kind)

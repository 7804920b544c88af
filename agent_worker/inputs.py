"""Input sources: the user's words as timed chunks (``UserChunk``), on the session's clock.

- a transcript file with word timestamps: JSON, either ``{"words": [...]}`` or a list, each
  word ``{"word" (or "text"), "start", "end"}`` in seconds from the start of the utterance;
- plain text spoken at a speech rate (150 words/min, docs/architecture.md#benchmarks), words evenly
  spaced;
- stdin, typed live: each line is a partial chunk, an empty line or end of input ends the
  utterance.

Timed words are grouped into chunks of about ``chunk_s`` (0.5 s): a chunk holds the words
ending in one window and is delivered when its last word ends; the last chunk is final, at
the end of the last word (where post-turn latency is measured from).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent_worker.clock import Clock
from agent_worker.events import UserChunk

SPEECH_WPM = 150.0
CHUNK_S = 0.5


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


def words_from_text(text: str, wpm: float = SPEECH_WPM, start: float = 0.0) -> list[Word]:
    """The text's words spoken at ``wpm`` words per minute, one after another."""
    if wpm <= 0:
        raise ValueError(f"speech rate must be positive, got {wpm!r}")
    each = 60.0 / wpm
    return [Word(w, start + i * each, start + (i + 1) * each)
            for i, w in enumerate(text.split())]


def read_transcript(path: Path) -> list[Word]:
    """Words with timestamps from a JSON transcript file (see the module docstring)."""
    data: Any = json.loads(path.read_text())
    items = data.get("words") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a list of words or {{\"words\": [...]}}")
    words = []
    for n, item in enumerate(items):
        try:
            text = str(item.get("word", item.get("text")))
            words.append(Word(text.strip(), float(item["start"]), float(item["end"])))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: word {n} needs word/text, start and end: {item!r}") \
                from error
    return sorted(words, key=lambda w: w.end)


def chunk_words(words: Sequence[Word], chunk_s: float = CHUNK_S) -> list[tuple[float, str]]:
    """(delivery time, text) per chunk: the words ending in each ``chunk_s`` window."""
    chunks: dict[int, list[Word]] = {}
    for word in words:
        chunks.setdefault(max(0, math.ceil(word.end / chunk_s - 1e-9) - 1), []).append(word)
    return [(group[-1].end, " ".join(w.text for w in group))
            for _, group in sorted(chunks.items())]


async def timed_chunks(clock: Clock, chunks: Sequence[tuple[float, str]],
                       ) -> AsyncIterator[UserChunk]:
    """Deliver chunks at their times (seconds from now); the last one is final."""
    origin = clock.now()
    for i, (at, text) in enumerate(chunks):
        await clock.sleep_until(origin + at)
        yield UserChunk(text, final=i == len(chunks) - 1, spoken_at=origin + at)


def spoken_text(clock: Clock, text: str, wpm: float = SPEECH_WPM,
                chunk_s: float = CHUNK_S) -> AsyncIterator[UserChunk]:
    return timed_chunks(clock, chunk_words(words_from_text(text, wpm), chunk_s))


def spoken_transcript(clock: Clock, path: Path, chunk_s: float = CHUNK_S,
                      ) -> AsyncIterator[UserChunk]:
    return timed_chunks(clock, chunk_words(read_transcript(path), chunk_s))


async def typed_lines(clock: Clock, stream: IO[str] | None = None) -> AsyncIterator[UserChunk]:
    """Lines typed on ``stream`` (stdin): each a partial chunk; an empty line or the end of
    input is the final one."""
    stream = stream or sys.stdin
    while True:
        line = await asyncio.to_thread(stream.readline)
        text = line.strip()
        if not line or not text:
            yield UserChunk("", final=True, spoken_at=clock.now())
            return
        yield UserChunk(text, final=False, spoken_at=clock.now())

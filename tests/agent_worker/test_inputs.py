"""Input sources: words at a speech rate or from a timestamped transcript, grouped into
~0.5 s chunks delivered on the clock; typed lines."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from agent_worker import inputs
from agent_worker.clock import VirtualClock
from agent_worker.events import UserChunk


def test_text_at_150_words_per_minute_in_half_second_chunks() -> None:
    words = inputs.words_from_text("one two three four five")
    assert [(w.start, w.end) for w in words][:2] == [(0.0, 0.4), (0.4, 0.8)]
    chunks = inputs.chunk_words(words, 0.5)
    assert [(round(t, 3), text) for t, text in chunks] == [
        (0.4, "one"), (0.8, "two"), (1.2, "three"), (2.0, "four five")]


def test_transcript_file_with_word_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"words": [
        {"word": "Ann", "start": 0.1, "end": 0.3}, {"text": "here", "start": 0.35, "end": 0.45},
        {"word": "please", "start": 1.2, "end": 1.6}]}))
    words = inputs.read_transcript(path)
    assert inputs.chunk_words(words) == [(0.45, "Ann here"), (1.6, "please")]
    path.write_text(json.dumps([{"word": "x"}]))
    with pytest.raises(ValueError, match="needs word/text, start and end"):
        inputs.read_transcript(path)


def test_chunks_arrive_at_their_times_and_the_last_is_final() -> None:
    async def main() -> list[tuple[float, UserChunk]]:
        clock = VirtualClock()
        got = []
        async with clock.running():
            async for chunk in inputs.spoken_text(clock, "a b c", wpm=60, chunk_s=1.0):
                got.append((clock.now(), chunk))
        return got

    got = asyncio.run(main())
    assert [(t, c.text, c.final, c.spoken_at) for t, c in got] == [
        (1.0, "a", False, 1.0), (2.0, "b", False, 2.0), (3.0, "c", True, 3.0)]


def test_typed_lines_end_with_an_empty_line() -> None:
    async def main() -> list[UserChunk]:
        clock = VirtualClock()
        stream = io.StringIO("I'd like\na kettle\n\nignored\n")
        return [c async for c in inputs.typed_lines(clock, stream)]

    chunks = asyncio.run(main())
    assert [(c.text, c.final) for c in chunks] == [("I'd like", False), ("a kettle", False),
                                                   ("", True)]

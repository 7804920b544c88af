"""The scripted voice session of ``specgate demo``: what Ann says, and when the agent acts.

Why a script with timing: the point of specgate is that an agent acts *while* the user is still
talking. The script is therefore laid out on the clock of real speech (150 words a minute,
an ASR partial every 0.5 s) and each agent action is attached to the phrase it reacts to; it
fires on the first partial transcript that contains that phrase, as a streaming agent would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

WORDS_PER_MIN = 150.0
WORD_S = 60.0 / WORDS_PER_MIN  # 0.4 s of speech per word
PARTIAL_S = 0.5  # an ASR partial every half second of speech
HESITATION_S = 0.6  # the silence of an "…"
ENDPOINT_S = 0.6  # silence after the last word before the agent decides the user is done
GAP_S = 1.0  # between two utterances (the agent answers, the user goes on)
PLAYBACK_TARGET_S = 6.0  # default playback length; with start-up the demo takes about 10 s

# What the script takes from stock; the demo restocks a product that has less.
NEEDS = {"espresso": 2, "grinder": 1, "kettle": 1}


@dataclass(frozen=True)
class Call:
    """The agent issues a tool call into the open turn (``supersedes``: amend a live one)."""

    client_id: str
    tool: str
    arguments: dict[str, Any]
    supersedes: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"tool": self.tool, "client_call_id": self.client_id,
                                "arguments": self.arguments}
        if self.supersedes is not None:
            body["supersedes"] = self.supersedes
        return body


@dataclass(frozen=True)
class Peek:
    """A second session, outside the turn, looks up the order the turn is building."""

    when: str


Reaction = Call | Peek


@dataclass(frozen=True)
class Segment:
    """A phrase and what the agent does as soon as it has heard it."""

    text: str
    then: tuple[Reaction, ...] = ()


@dataclass(frozen=True)
class Utterance:
    """One user turn; ``ending`` is what the agent does with the turn once the user is done,
    ``after`` what happens once that is decided."""

    segments: tuple[Segment, ...]
    ending: Literal["commit", "cancel"]
    after: tuple[Reaction, ...] = ()
    reason: str = ""

    def ending_body(self) -> dict[str, Any]:
        return {"reason": self.reason} if self.ending == "cancel" and self.reason else {}


@dataclass(frozen=True)
class Beat:
    """One ASR partial: at ``at_s`` seconds of speech the transcript reads ``heard``."""

    at_s: float
    heard: str
    reactions: tuple[Reaction, ...] = field(default=())
    final: bool = False


ORDER = "$1.order_id"

TURNS: tuple[Utterance, ...] = (
    Utterance(
        segments=(
            Segment("Hi, this is Ann —", (Call("1", "demo.create_order", {"customer": "Ann"}),)),
            Segment("I'd like to order two bags of espresso …", (
                Call("2", "demo.add_item", {"order_id": ORDER, "sku": "espresso", "quantity": 2}),
            )),
            Segment("no wait, make that one hand grinder …", (
                Call("2", "demo.add_item", {"order_id": ORDER, "sku": "grinder", "quantity": 1},
                     supersedes="2"),
                Call("3", "demo.get_order", {"order_id": ORDER}),
                Peek("while the turn is open"),
            )),
            Segment("and put it on my card ending 4242.", (
                Call("4", "demo.place_order", {"order_id": ORDER, "card_last4": "4242"}),
            )),
        ),
        ending="commit",
        after=(Peek("after commit"),),
    ),
    Utterance(
        segments=(
            Segment("Oh, and a gooseneck kettle too, on a new order …", (
                Call("1", "demo.create_order", {"customer": "Ann"}),
                Call("2", "demo.add_item", {"order_id": ORDER, "sku": "kettle", "quantity": 1}),
            )),
            Segment("actually, cancel that."),
        ),
        ending="cancel",
        reason="the user took it back",
    ),
)


def _timed_tokens(utterance: Utterance) -> list[tuple[float, str, int]]:
    """(time the token has been said, token, segment index): words take ``WORD_S``, an "…" is
    a hesitation, other punctuation takes no time."""
    clock, tokens = 0.0, []
    for index, segment in enumerate(utterance.segments):
        for token in segment.text.split():
            if any(ch.isalnum() for ch in token):
                clock += WORD_S
            elif token == "…":
                clock += HESITATION_S
            tokens.append((clock, token, index))
    return tokens


def _segment_ends(tokens: list[tuple[float, str, int]]) -> dict[int, float]:
    """When the last *word* of each segment has been said (a trailing "…" is a pause that the
    agent already spends acting)."""
    ends: dict[int, float] = {}
    for at, token, index in tokens:
        if any(ch.isalnum() for ch in token):
            ends[index] = at
    return ends


def beats(utterance: Utterance) -> list[Beat]:
    """The ASR partials of an utterance, each carrying the reactions that became due, then the
    final transcript after the end-of-speech silence."""
    tokens = _timed_tokens(utterance)
    ends = _segment_ends(tokens)
    last = max(ends.values())
    fired: set[int] = set()
    out: list[Beat] = []
    for k in range(1, math.ceil(last / PARTIAL_S - 1e-9) + 1):
        tick = k * PARTIAL_S
        heard = " ".join(tok for at, tok, _ in tokens if at <= tick + 1e-9)
        due = sorted(i for i, end in ends.items() if end <= tick + 1e-9 and i not in fired)
        fired.update(due)
        reactions = tuple(r for i in due for r in utterance.segments[i].then)
        out.append(Beat(tick, heard, reactions))
    full = " ".join(segment.text for segment in utterance.segments)
    out.append(Beat(last + ENDPOINT_S, full, (), final=True))
    return out


def speech_seconds(turns: tuple[Utterance, ...] = TURNS) -> float:
    """Length of the whole session in real speech time, pauses between turns included."""
    return sum(beats(u)[-1].at_s for u in turns) + GAP_S * (len(turns) - 1)


def default_speed(turns: tuple[Utterance, ...] = TURNS) -> float:
    """The playback factor that makes the demo take about ``PLAYBACK_TARGET_S`` to play."""
    return round(speech_seconds(turns) / PLAYBACK_TARGET_S, 2)

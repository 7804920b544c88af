"""The demo's timeline, built only from what the gateway reports on its SSE streams.

Why from the stream: the demo claims that calls were held, cancelled, staged and committed. The
script knows what it *asked* for; only the gateway's event stream (``GET /v1/sessions/{sid}/
events``, read from the ledger's audit trail) says what *happened*, so every status shown or
written to ``--json-out`` comes from there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx

FINAL_TURN = {"committed", "cancelled", "aborted", "expired"}


@dataclass
class CallRow:
    """One call as the stream showed it: every status it went through, with times."""

    who: str
    turn: int
    call_id: str
    client_id: str
    tool: str
    effect: str
    t: float
    statuses: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    reason: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> str:
        return self.statuses[-1] if self.statuses else "?"


@dataclass
class Heard:
    """What the user said in one turn so far, and how the agent ended the turn."""

    text: str = ""
    ending: str | None = None


@dataclass
class View:
    """A consistent copy of the timeline for one frame of the display."""

    elapsed: float
    heard: list[Heard]
    notes: list[tuple[float, str, str]]
    rows: list[CallRow]


class Timeline:
    """Thread-safe state shared by the SSE feeds (writers), the script and the display."""

    def __init__(self, effects: dict[str, str]) -> None:
        self.effects = effects
        self.start = time.time()
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.rows: dict[str, CallRow] = {}
        self.turns: dict[str, str] = {}
        self._turn_no: dict[str, int] = {}
        self._per_session: dict[str, int] = {}
        self.heard: list[Heard] = []
        self.notes: list[tuple[float, str, str]] = []
        self.arguments: dict[str, dict[str, Any]] = {}

    def now(self) -> float:
        return time.time() - self.start

    def _at(self, event: dict[str, Any]) -> float:
        return datetime.fromisoformat(event["at"]).timestamp() - self.start

    def add_event(self, who: str, event: dict[str, Any]) -> None:
        """Apply one SSE event (called by a feed thread)."""
        t = self._at(event)
        with self._cond:
            self.events.append({**event, "who": who, "t": round(t, 3)})
            turn = event["turn_id"]
            if turn not in self._turn_no:
                self._per_session[who] = self._per_session.get(who, 0) + 1
                self._turn_no[turn] = self._per_session[who]
            if event["entity"] == "turn":
                self.turns[turn] = event["to"]
            else:
                self._add_call_event(who, event, t)
            self._cond.notify_all()

    def _add_call_event(self, who: str, event: dict[str, Any], t: float) -> None:
        row = self.rows.get(event["call_id"])
        if row is None:
            row = self.rows[event["call_id"]] = CallRow(
                who=who, turn=self._turn_no[event["turn_id"]], call_id=event["call_id"],
                client_id=str(event["client_call_id"]), tool=event["tool"],
                effect=self.effects.get(event["tool"], "?"), t=t)
        row.statuses.append(event["to"])
        row.times.append(round(t, 3))
        row.reason = (event.get("detail") or {}).get("reason", row.reason)

    def wait_turns(self, turn_ids: Iterable[str], timeout_s: float) -> bool:
        """Block until the stream has shown every given turn decided. A turn's final event is
        written after its calls' in the same transaction, so then every call is final too."""
        wanted = list(turn_ids)
        with self._cond:
            return self._cond.wait_for(
                lambda: all(self.turns.get(t) in FINAL_TURN for t in wanted), timeout_s)

    def hear(self, turn: int, text: str, ending: str | None = None) -> None:
        """The latest ASR partial of a turn (0-based), and how the agent ended the turn."""
        with self._cond:
            while len(self.heard) <= turn:
                self.heard.append(Heard())
            self.heard[turn].text = text
            if ending is not None:
                self.heard[turn].ending = ending

    def note(self, who: str, text: str) -> None:
        """What the agent or the other app was told by the gateway, shown under the speech."""
        with self._cond:
            self.notes.append((self.now(), who, text))

    def describe(self, call_id: str, arguments: dict[str, Any]) -> None:
        """The call's arguments as the gateway echoed them (resolved) when it was issued."""
        with self._cond:
            self.arguments[call_id] = arguments

    def view(self) -> View:
        """A deep copy for one frame or the report, taken under the lock."""
        with self._cond:
            rows = sorted(self.rows.values(), key=lambda r: r.t)
            copies = [CallRow(**{**asdict(r), "arguments": self.arguments.get(r.call_id, {})})
                      for r in rows]
            return View(self.now(), [Heard(h.text, h.ending) for h in self.heard],
                        list(self.notes), copies)


class EventFeed(threading.Thread):
    """Consumes one session's SSE stream into the timeline.

    The stream never ends by itself, so reads time out every ``poll_s`` to notice ``stop()``;
    the feed then reconnects with ``Last-Event-ID``, which the gateway resumes from exactly.
    """

    def __init__(self, base_url: str, key: str, session_id: str, who: str,
                 sink: Callable[[str, dict[str, Any]], None], poll_s: float = 0.5) -> None:
        super().__init__(name=f"demo-sse-{who}", daemon=True)
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                                   timeout=httpx.Timeout(10.0, read=poll_s))
        self.path = f"/v1/sessions/{session_id}/events"
        self.who, self.sink = who, sink
        self.last_id: int | None = None
        self.error: str | None = None
        self._halt = threading.Event()

    def halt(self) -> None:
        """Ask the feed to end at its next read (``stop`` also waits for it)."""
        self._halt.set()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)
        self.client.close()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._consume()
            except httpx.ReadTimeout:
                continue
            except httpx.HTTPError as error:
                if self._halt.is_set():
                    return
                self.error = f"{type(error).__name__}: {error}"
                time.sleep(0.2)

    def _consume(self) -> None:
        headers = {"Last-Event-ID": str(self.last_id)} if self.last_id is not None else {}
        with self.client.stream("GET", self.path, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                self.error = f"GET {self.path} → {response.status_code}: {response.text}"
                self._halt.set()
                return
            for line in response.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:].strip())
                    self.last_id = int(event["id"])
                    self.sink(self.who, event)
                if self._halt.is_set():
                    return

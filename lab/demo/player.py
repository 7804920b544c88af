"""Plays the scripted session against a running gateway over its REST API.

Why over HTTP against a real server: the demo should show what an agent integrating specgate
would see, with the same requests, not a shortcut into the gateway's internals.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from lab.demo.script import GAP_S, Call, Peek, Reaction, Utterance, beats
from lab.demo.timeline import Timeline

ANN, OTHER = "Ann", "2nd"


class DemoError(RuntimeError):
    """The demo could not show what it set out to show; the message says which request."""


class Api:
    """A small REST client: any answer but 2xx is an error that names the request."""

    def __init__(self, base_url: str, key: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30.0,
                                   headers={"Authorization": f"Bearer {key}"})

    def send(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.request(method, path, json=body)
        if not response.is_success:
            raise DemoError(f"{method} {path} {body or ''} → {response.status_code}: "
                            f"{response.text}")
        return response.json()

    def close(self) -> None:
        self.client.close()


@dataclass
class Player:
    """Ann's voice agent (``ann``) and a second app (``other``) looking in from outside."""

    ann: Api
    other: Api
    timeline: Timeline
    speed: float | None  # None: no pauses at all
    session: str = ""
    other_session: str = ""
    open_turn: str | None = None
    other_turn: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    order_id: str | None = None
    peeks: list[dict[str, Any]] = field(default_factory=list)
    speaking: bool = False
    _clock0: float = 0.0

    def start(self) -> None:
        """Open both sessions (each comes with its first turn open)."""
        body = self.ann.send("POST", "/v1/sessions", {"metadata": {"demo": "voice order"}})
        self.session, self.open_turn = body["id"], body["turns"][0]["id"]
        body = self.other.send("POST", "/v1/sessions", {"metadata": {"demo": "second app"}})
        self.other_session, self.other_turn = body["id"], body["turns"][0]["id"]

    def turn_ids(self) -> list[str]:
        return [t["id"] for t in self.turns]

    def play(self, utterances: tuple[Utterance, ...]) -> None:
        """Say every utterance on the speech clock, reacting to the partials as they come."""
        self._clock0, offset = time.monotonic(), 0.0
        for n, utterance in enumerate(utterances):
            if self.open_turn is None:
                self.open_turn = self.ann.send(
                    "POST", f"/v1/sessions/{self.session}/turns", {})["id"]
            self.speaking = True
            for beat in beats(utterance):
                self._wait(offset + beat.at_s)
                self.timeline.hear(n, beat.heard)
                for reaction in beat.reactions:
                    self._react(reaction)
            self.speaking = False
            self._end(n, utterance)
            for reaction in utterance.after:
                self._react(reaction)
            offset += beats(utterance)[-1].at_s + GAP_S

    def _wait(self, speech_s: float) -> None:
        if self.speed is None:
            return
        delay = self._clock0 + speech_s / self.speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _react(self, reaction: Reaction) -> None:
        if isinstance(reaction, Call):
            self._call(reaction)
        else:
            self._peek(reaction)

    def _call(self, call: Call) -> None:
        view = self.ann.send("POST", f"/v1/sessions/{self.session}/calls", call.body())
        self.timeline.describe(view["id"], view["resolved_arguments"] or view["arguments"])
        result = view["result"] or {}
        if call.tool == "demo.create_order" and self.order_id is None and "order_id" in result:
            self.order_id = result["order_id"]
        if call.tool == "demo.get_order" and view["status"] == "succeeded":
            items = ", ".join(f"{i['quantity']} × {i['sku']}" for i in result["items"])
            self.timeline.note("agent", f"get_order sees {result['order_id']} "
                               f"{result['status']} with {items or 'no items'} "
                               "(the turn's own pending writes)")
        if view["status"] == "staged":
            self.timeline.note("agent", f"{call.tool} staged: preflight passed, it runs only "
                               "if the turn is committed")
        if view["status"] == "failed":
            self.timeline.note("agent", f"{call.tool} failed: {view['error']}")

    def _end(self, n: int, utterance: Utterance) -> None:
        """The user is done: keep everything live (commit) or drop it all (cancel)."""
        turn = self.open_turn
        assert turn is not None
        self.ann.send("POST", f"/v1/sessions/{self.session}/turns/{turn}/{utterance.ending}",
                      utterance.ending_body())
        self.open_turn = None
        self.turns.append({"who": ANN, "id": turn, "ending": utterance.ending})
        self.timeline.hear(n, " ".join(s.text for s in utterance.segments), utterance.ending)

    def _peek(self, peek: Peek) -> None:
        """The second app looks the order up in a turn of its own, then closes that turn."""
        if self.other_turn is None:
            self.other_turn = self.other.send(
                "POST", f"/v1/sessions/{self.other_session}/turns", {})["id"]
        turn = self.other_turn
        view = self.other.send("POST", f"/v1/sessions/{self.other_session}/calls", {
            "tool": "demo.get_order", "client_call_id": "look",
            "arguments": {"order_id": self.order_id}})
        self.timeline.describe(view["id"], view["arguments"])
        self.other.send("POST", f"/v1/sessions/{self.other_session}/turns/{turn}/commit", {})
        self.other_turn = None
        self.turns.append({"who": OTHER, "id": turn, "ending": "commit"})
        found = view["status"] == "succeeded"
        record = {"when": peek.when, "order_id": self.order_id, "call_status": view["status"],
                  "found": found, "order_status": view["result"]["status"] if found else None,
                  "error": view["error"]}
        self.peeks.append(record)
        seen = (f"found it, {record['order_status']}" if found
                else f"not found ({(view['error'] or {}).get('message', view['status'])})")
        self.timeline.note("2nd app", f"{peek.when}: get_order {self.order_id} → {seen}")

    def abandon(self) -> None:
        """After an error or Ctrl-C: cancel a turn left open, so nothing stays held."""
        for api, session, turn in ((self.ann, self.session, self.open_turn),
                                   (self.other, self.other_session, self.other_turn)):
            if session and turn:
                with contextlib.suppress(DemoError, httpx.HTTPError):
                    api.send("POST", f"/v1/sessions/{session}/turns/{turn}/cancel",
                             {"reason": "demo interrupted"})
        self.open_turn = self.other_turn = None

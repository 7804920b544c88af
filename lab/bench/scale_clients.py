"""The scale benchmark's clients: voice sessions behind a balancer, a new connection per
request.

Each request opens its own HTTP connection (``Connection: close``), so the round-robin balancer
sends it to the next gateway, whichever owns the session: the gateways forward to the owner, as
they do behind a stock load balancer without affinity. The client is the standard library's
``http.client``, the lightest there is, because it shares the machine's cores with what it
measures (see ``lab/bench/client.py``).

A turn is what a voice agent does while the user speaks, then at the end of the utterance: open
the turn, three reversible calls (open an order, add a product twice), one sensitive call (place
the order, staged until commit), commit. Each session adds its own product, so no two sessions
wait on one product row: a lock wait seen is the gateway's, not the demo shop's.

A 429 or 503 (a bounded resource, an owner moving) is retried, as a production client does
after its ``Retry-After``, but sooner (the benchmark wants the turn, not the pause), and
counted. Any other unexpected answer is an error: counted, the turn cancelled, the session
replaced, and the run goes on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RETRY_PAUSE_S = 0.1
MAX_RETRIES = 600  # a minute of refusals in a row is an error
KEPT_ERRORS = 5  # error messages kept per client, for the report


class TurnFailed(Exception):
    """An answer a correct run never sees (or no answer at all)."""


class Refused(Exception):
    """A 429/503: the gateways are full or moving; ``code`` says why."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.label = f"{status} {code}"


def request(host: str, port: int, method: str, path: str, key: str,
            body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One request on a connection of its own."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise TurnFailed(f"{method} {path}: {type(error).__name__}: {error}") from error
    finally:
        conn.close()


def _object(path: str, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise TurnFailed(f"{path} answered no JSON: {raw[:200]!r}") from error
    if not isinstance(data, dict):
        raise TurnFailed(f"{path} answered {data!r}, not an object")
    return data


def _error_code(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


@dataclass
class Gateway:
    """Where the clients send their requests (the balancer) and with which key."""

    host: str
    port: int
    key: str

    def post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        """POST; the answer if its status is ``expect``; ``Refused`` on 429/503."""
        status, raw = request(self.host, self.port, "POST", path, self.key, body)
        if status in (429, 503):
            raise Refused(status, _error_code(raw))
        if status != expect:
            raise TurnFailed(f"POST {path} answered {status}, expected {expect}: "
                             f"{raw[:300].decode(errors='replace')}")
        return _object(path, raw)

    def get(self, path: str) -> int:
        return request(self.host, self.port, "GET", path, self.key)[0]


@dataclass
class TurnClient:
    """One session doing turns, one request at a time, on its own thread."""

    gateway: Gateway
    sku: str
    customer: str
    sid: str = ""
    tid: str = ""
    fresh: bool = False  # the session's first turn is open and unused
    turns: int = 0
    latencies_s: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def open(self) -> TurnClient:
        """A new session, with its first turn open."""
        created = self._post("/v1/sessions", {"metadata": {"bench": "scale"}}, 201)
        self.sid, self.tid, self.fresh = created["id"], created["turns"][0]["id"], True
        return self

    def turn(self, measured: bool = True) -> bool:
        """One whole turn; False if it failed (counted, and the session replaced)."""
        start = time.perf_counter()
        try:
            self._turn()
        except TurnFailed as error:
            self._failed(str(error))
            return False
        if measured:
            self.turns += 1
            self.latencies_s.append(time.perf_counter() - start)
        return True

    def _turn(self) -> None:
        if not self.sid:
            self.open()
        if not self.fresh:
            self.tid = self._post(f"/v1/sessions/{self.sid}/turns", {}, 201)["id"]
        self.fresh = False
        order = "$1.order_id"
        for cid, tool, arguments, status in (
                (1, "create_order", {"customer": self.customer}, "held"),
                (2, "add_item", {"order_id": order, "sku": self.sku, "quantity": 1}, "held"),
                (3, "add_item", {"order_id": order, "sku": self.sku, "quantity": 2}, "held"),
                (4, "place_order", {"order_id": order, "card_last4": "4242"}, "staged")):
            call = self._post(f"/v1/sessions/{self.sid}/calls",
                              {"tool": f"demo.{tool}", "client_call_id": cid,
                               "arguments": arguments}, 201)
            if call.get("status") != status:
                raise TurnFailed(f"demo.{tool} is {call.get('status')!r}, expected "
                                 f"{status!r}: {call.get('error')}")
        turn = self._post(f"/v1/sessions/{self.sid}/turns/{self.tid}/commit", {}, 200)
        if turn.get("status") != "committed":
            raise TurnFailed(f"turn ended {turn.get('status')!r}: {turn.get('error')}")

    def _post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        """POST, retrying 429/503 answers. A 429 is refused before any effect; a 503 from an
        owner that did not answer in time may not be, and a repeat of a call that ran then
        fails the turn, which is counted as an error: the run never hides one."""
        for _ in range(MAX_RETRIES):
            try:
                return self.gateway.post(path, body, expect)
            except Refused as refusal:
                self.refused[refusal.label] += 1
                time.sleep(RETRY_PAUSE_S)
        raise TurnFailed(f"POST {path}: still refused after {MAX_RETRIES} tries")

    def _failed(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < KEPT_ERRORS:
            self.error_samples.append(message)
        if self.sid and self.tid:  # leave nothing held; the session starts over
            with contextlib.suppress(TurnFailed, Refused):
                self.gateway.post(f"/v1/sessions/{self.sid}/turns/{self.tid}/cancel", {}, 200)
        self.sid = self.tid = ""  # the next turn opens a new session
        time.sleep(RETRY_PAUSE_S)


@dataclass
class HeldTurns:
    """The held-turn ceiling's probe: turns each holding one reversible call."""

    held: list[tuple[str, str]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    opened: list[tuple[str, str]] = field(default_factory=list)
    stopped_by: str = ""


def hold_turns(gateway: Gateway, gateways: int, cap: int,
               advance: Callable[[], None]) -> HeldTurns:
    """Open sessions one by one, each with one held ``create_order``, until every gateway has
    refused in turn (``gateways`` refusals in a row) or ``cap`` turns are held.

    Behind a per-connection round robin, a session is owned by the gateway its creation reached,
    and each session here costs two connections (create, call): with two gateways every session
    would be created on the same one, whose bound would then look like the pool's. So each
    session is followed by ``GET /healthz`` requests that shift the rotation by one gateway per
    session, and the gateways fill evenly, as they do under many interleaved clients."""
    result = HeldTurns()
    padding = -1 % gateways  # (2 + padding) % gateways == 1: the next session, the next gateway
    refusals_in_a_row = 0
    while len(result.held) < cap:
        created = gateway.post("/v1/sessions", {"metadata": {"bench": "scale-held"}}, 201)
        sid, tid = created["id"], created["turns"][0]["id"]
        result.opened.append((sid, tid))
        try:
            call = gateway.post(f"/v1/sessions/{sid}/calls",
                                {"tool": "demo.create_order", "client_call_id": 1,
                                 "arguments": {"customer": f"held-{len(result.opened)}"}}, 201)
        except Refused as refusal:
            result.refused[refusal.label] += 1
            refusals_in_a_row += 1
            if refusals_in_a_row >= gateways:
                result.stopped_by = "refused"
                break
        else:
            if call.get("status") != "held":
                raise TurnFailed(f"held probe: create_order is {call.get('status')!r}")
            result.held.append((sid, tid))
            refusals_in_a_row = 0
            advance()
        for _ in range(padding):
            gateway.get("/healthz")
    else:
        result.stopped_by = "cap"
    return result


def cancel_all(gateway: Gateway, turns: list[tuple[str, str]]) -> int:
    """Cancel every probe turn (held or not); how many answered other than 200."""
    failed = 0
    for sid, tid in turns:
        try:
            gateway.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}, 200)
        except (TurnFailed, Refused):
            failed += 1
    return failed

"""The gateway at the edge of a training stream: an in-process stand-in the agent's own
``GatewayClient`` reaches over httpx's ``MockTransport``, answering every call from the sample's
``Spec`` (τ²'s reference outcomes, BFCL's executed results) instead of running a tool.

From the agent's side it is the gateway's REST API, as ``GatewayClient`` speaks it, for one
session: its turns, calls issued into the open turn, cancels, amends (``supersedes``), commits,
the transcript.
What it keeps of the gateway's behaviour, and only that:

- a call settles in the answer that issues it, as a ``db`` call does: ``succeeded`` with its
  result, ``staged`` (a sensitive write, shown as staged), or ``failed`` with its error. The
  tool's latency is the runtime's injected one (``AgentConfig.tool_latency``), not ours;
- cancelling a call, or amending it, cancels it and, transitively, the live calls of its turn
  that depend on it (the gateway's cascade), and answers with every call it changed;
- a commit keeps the calls it names and cancels the other live ones of the turn.

Not kept: held transactions and their replays (so no conflicts), approvals, commits that fail,
the tool worker. Which result a call gets: that of the first gold call with its tool and these
arguments (a wrong early call's, a corrected value said wrong) not already held by another of
the session's standing calls. A call no result fits is refused (``no_result``) and the stream
abandoned (``problem``): the spec lacks a result, so the sample cannot be played.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent_worker import call_records
from agent_worker.clock import Clock
from agent_worker.gateway_client import GatewayClient
from lab.training.sources import Spec, call_key

LIVE = frozenset({"succeeded", "staged"})
STANDING = LIVE | {"failed", "committed"}  # the calls that hold their gold call
STAGED = call_records.observation({"status": "staged"})  # how a staged call is shown


class Refused(Exception):
    """A request the gateway answers with an error (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class _Call:
    id: str
    turn: str
    client: str
    tool: str
    arguments: dict[str, Any]
    gold: int
    deps: tuple[str, ...]  # gateway ids of the calls it depends on
    depends_on: tuple[str, ...]  # their client ids, as issued
    supersedes: str | None
    status: str
    result: Any = None
    error: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "turn_id": self.turn, "client_call_id": self.client,
                "tool": self.tool, "status": self.status, "arguments": self.arguments,
                "depends_on": list(self.depends_on), "supersedes": self.supersedes,
                "result": self.result, "error": self.error}


@dataclass
class _Turn:
    id: str
    status: str = "open"
    calls: list[_Call] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "calls": [c.view() for c in self.calls]}


class ScriptedGateway:
    """One session's gateway for ``spec`` (see the module docstring)."""

    SESSION = "session-1"

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.names = {g.id: g.name for g in spec.task.calls}
        self.turns: list[_Turn] = []
        self.calls: dict[str, _Call] = {}
        self.numbers = itertools.count(1)
        self.problem: str | None = None
        self.refused: asyncio.Event | None = None

    @asynccontextmanager
    async def client(self, clock: Clock) -> AsyncIterator[GatewayClient]:
        """The agent's real client, wired to this gateway."""
        self.refused = asyncio.Event()
        client = GatewayClient.connect("http://gateway.test", "training", clock,
                                       transport=httpx.MockTransport(self.handle))
        try:
            yield client
        finally:
            await client.aclose()

    # HTTP -----------------------------------------------------------------------------------

    ROUTES = (("GET", r"/v1/tools", "_tools"), ("POST", r"/v1/sessions", "_create"),
              ("GET", r"/v1/sessions/[^/]+", "_session"),
              ("POST", r"/v1/sessions/[^/]+/turns", "_open_turn"),
              ("POST", r"/v1/sessions/[^/]+/calls", "_issue"),
              ("POST", r"/v1/sessions/[^/]+/transcript", "_transcript"),
              ("POST", r"/v1/sessions/[^/]+/turns/([^/]+)/commit", "_commit"),
              ("POST", r"/v1/sessions/[^/]+/turns/([^/]+)/cancel", "_cancel_turn"),
              ("GET", r"/v1/calls/([^/]+)", "_call"),
              ("POST", r"/v1/calls/([^/]+)/cancel", "_cancel"))

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        for method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, request.url.path)
            if match and request.method == method:
                try:
                    answer = getattr(self, name)(body, *match.groups())
                except Refused as error:
                    return httpx.Response(error.status, json={"error": {
                        "code": error.code, "message": str(error)}})
                return httpx.Response(200, json=answer)
        return httpx.Response(404, json={"error": {"code": "not_found",
                                                   "message": request.url.path}})

    # Sessions and turns ---------------------------------------------------------------------

    def _tools(self, body: Any) -> dict[str, Any]:
        return {"tools": list(self.spec.tools)}

    def _create(self, body: Any) -> dict[str, Any]:
        self.turns = [_Turn("turn-1")]
        return self._session(body)

    def _session(self, body: Any) -> dict[str, Any]:
        return {"id": self.SESSION, "turns": [t.view() for t in self.turns]}

    def _open_turn(self, body: Any) -> dict[str, Any]:
        self.turns.append(_Turn(f"turn-{len(self.turns) + 1}"))
        return self.turns[-1].view()

    def _transcript(self, body: Any) -> dict[str, Any]:
        return {}

    def _turn(self, turn_id: str) -> _Turn:
        turn = next((t for t in self.turns if t.id == turn_id), None)
        if turn is None:
            raise Refused(404, "not_found", f"no turn {turn_id!r}")
        return turn

    def _commit(self, body: Any, turn_id: str) -> dict[str, Any]:
        turn = self._turn(turn_id)
        live = {c.client: c for c in turn.calls if c.status in LIVE}
        unknown = [k for k in body.get("keep", []) if k not in live]
        if unknown:
            raise Refused(409, "unknown_keep", f"no live call {unknown[0]!r} to keep")
        for call in live.values():
            call.status = "committed" if call.client in body["keep"] else "cancelled"
        turn.status = "committed"
        return turn.view()

    def _cancel_turn(self, body: Any, turn_id: str) -> dict[str, Any]:
        turn = self._turn(turn_id)
        for call in turn.calls:
            if call.status in LIVE:
                call.status = "cancelled"
        turn.status = "cancelled"
        return turn.view()

    # Calls ----------------------------------------------------------------------------------

    def _call(self, body: Any, call_id: str) -> dict[str, Any]:
        if call_id not in self.calls:
            raise Refused(404, "not_found", f"no call {call_id!r}")
        return self.calls[call_id].view()

    def _issue(self, body: Any) -> dict[str, Any]:
        turn = self.turns[-1] if self.turns else None
        if turn is None or turn.status != "open":
            raise Refused(409, "turn_not_open", "no open turn")
        live = {c.client: c for c in turn.calls if c.status in LIVE}
        old = live.pop(body["supersedes"], None) if body.get("supersedes") else None
        if body.get("supersedes") and old is None:
            raise Refused(400, "unknown_supersedes", f"no live call {body['supersedes']!r}")
        if body["client_call_id"] in live:
            raise Refused(409, "duplicate_client_call_id", "already live in this turn")
        missing = [d for d in body["depends_on"] if d not in live]
        if missing:
            raise Refused(400, "unknown_dependency", f"no live call {missing[0]!r}")
        gold = self._gold(body["tool"], body["arguments"], body["client_call_id"])
        if old is not None:
            self._cascade(old)
        call = _Call(f"call-{next(self.numbers)}", turn.id, body["client_call_id"],
                     body["tool"], body["arguments"], gold,
                     tuple(live[d].id for d in body["depends_on"]), tuple(body["depends_on"]),
                     old.id if old else None, "succeeded")
        self._settle(call)
        turn.calls.append(call)
        self.calls[call.id] = call
        return call.view()

    def _gold(self, tool: str, arguments: dict[str, Any], client: str) -> int:
        """The gold call whose result this call gets (see the module docstring)."""
        key = call_key(arguments)
        same = [g for g, k in self.spec.results if k == key and self.names.get(g) == tool]
        if not same:
            self.problem = f"{self.spec.key}: no result for {tool} {arguments}"
            assert self.refused is not None
            self.refused.set()
            raise Refused(500, "no_result", self.problem)
        taken = {c.gold for c in self.calls.values()
                 if c.status in STANDING and c.client != client}
        return next((g for g in same if g not in taken), same[0])

    def _settle(self, call: _Call) -> None:
        result = self.spec.results[(call.gold, call_key(call.arguments))]
        if not result.ok:
            payload = result.payload
            error = payload.get("error") if isinstance(payload, dict) else None
            call.status = "failed"
            call.error = error if isinstance(error, dict) else {
                "code": "tool_failed", "message": str(payload)}
        elif result.payload == STAGED:
            call.status = "staged"
        else:
            call.result = result.payload

    def _cancel(self, body: Any, call_id: str) -> list[dict[str, Any]]:
        call = self.calls.get(call_id)
        if call is None:
            raise Refused(404, "not_found", f"no call {call_id!r}")
        return [c.view() for c in self._cascade(call)] if call.status in LIVE else []

    def _cascade(self, root: _Call) -> list[_Call]:
        """``root`` and every live call of its turn depending on it, transitively, cancelled
        (in issue order)."""
        turn = self._turn(root.turn)
        doomed = {root.id}
        for call in turn.calls:
            if call.status in LIVE and doomed.intersection(call.deps):
                doomed.add(call.id)
        changed = [c for c in turn.calls if c.id in doomed and c.status in LIVE]
        for call in changed:
            call.status = "cancelled"
        return changed

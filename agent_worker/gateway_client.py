"""An async client of the gateway's REST API (docs/rest-api.md), as the agent worker uses it.

Every request runs inside ``clock.busy()``: on a simulated clock the gateway's real time does
not count (see ``agent_worker.clock``). Mutating requests carry an ``Idempotency-Key``, so the
one retry after a transport error can never issue a call twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from agent_worker.clock import Clock
from agent_worker.errors import GatewayError

LIVE = frozenset({"proposed", "running", "held", "succeeded", "staged"})
UNSETTLED = frozenset({"proposed", "running"})
WAIT_S = 10.0


class GatewayClient:
    def __init__(self, http: httpx.AsyncClient, clock: Clock) -> None:
        self.http = http
        self.clock = clock

    @classmethod
    def connect(cls, base_url: str, key: str, clock: Clock,
                transport: httpx.AsyncBaseTransport | None = None,
                timeout_s: float = 60.0) -> GatewayClient:
        http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {key}"})
        return cls(http, clock)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, method: str, path: str, body: Any = None,
                    params: dict[str, Any] | None = None) -> Any:
        headers = {} if method == "GET" else {"Idempotency-Key": uuid.uuid4().hex}
        async with self.clock.busy():
            for attempt in (1, 2):
                try:
                    response = await self.http.request(method, path, json=body, params=params,
                                                       headers=headers)
                    break
                except httpx.TransportError as error:
                    if attempt == 2:
                        raise GatewayError(0, "unreachable", f"{method} {path}: {error!r}") \
                            from error
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    async def tools(self) -> list[dict[str, Any]]:
        body = await self._send("GET", "/v1/tools")
        return list(body["tools"])

    async def create_session(self, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(await self._send("POST", "/v1/sessions", {"metadata": metadata or {}}))

    async def open_turn(self, session_id: str) -> dict[str, Any]:
        return dict(await self._send("POST", f"/v1/sessions/{session_id}/turns", {}))

    async def session(self, session_id: str) -> dict[str, Any]:
        return dict(await self._send("GET", f"/v1/sessions/{session_id}"))

    async def issue(self, session_id: str, *, tool: str, arguments: dict[str, Any],
                    client_call_id: str, depends_on: list[str],
                    supersedes: str | None) -> dict[str, Any]:
        body = {"tool": tool, "arguments": arguments, "client_call_id": client_call_id,
                "depends_on": depends_on, "supersedes": supersedes}
        return dict(await self._send("POST", f"/v1/sessions/{session_id}/calls", body))

    async def call(self, call_id: str, wait_s: float = 0) -> dict[str, Any]:
        params = {"wait": wait_s} if wait_s else None
        return dict(await self._send("GET", f"/v1/calls/{call_id}", params=params))

    async def settle(self, view: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
        """The call once it has settled (held, succeeded, staged, failed) or left the turn.
        A ``db`` call is settled in the answer that issued it; a ``task`` call is waited for
        with long polls of ``?wait=``."""
        waited = 0.0
        while view["status"] in UNSETTLED and waited < timeout_s:
            view = await self.call(view["id"], wait_s=WAIT_S)
            waited += WAIT_S
        return view

    async def cancel(self, call_id: str, reason: str) -> list[dict[str, Any]]:
        return list(await self._send("POST", f"/v1/calls/{call_id}/cancel", {"reason": reason}))

    async def commit(self, session_id: str, turn_id: str, keep: list[str]) -> dict[str, Any]:
        return dict(await self._send("POST", f"/v1/sessions/{session_id}/turns/{turn_id}/commit",
                                     {"keep": keep}))

    async def append_transcript(self, session_id: str, text: str, *, final: bool,
                                turn_id: str | None) -> None:
        """Record what the user said, for the operators' session timeline."""
        await self._send("POST", f"/v1/sessions/{session_id}/transcript",
                         {"text": text, "final": final, "turn_id": turn_id})

    async def cancel_turn(self, session_id: str, turn_id: str, reason: str) -> dict[str, Any]:
        return dict(await self._send("POST", f"/v1/sessions/{session_id}/turns/{turn_id}/cancel",
                                     {"reason": reason}))


def _error(response: httpx.Response) -> GatewayError:
    try:
        error = response.json()["error"]
        return GatewayError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return GatewayError(response.status_code, "http_error", response.text[:300])

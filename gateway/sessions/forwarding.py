"""Any gateway answers any request: a session's requests reaching a gateway that does not own
the session are forwarded to the gateway that does (docs/deployment.md#several-gateways).

A session is owned by one gateway at a time (its open turn holds that gateway's database
connection). Behind a plain load balancer a request lands anywhere, so every request under
``/v1/sessions/{id}/…`` is first served here as usual; when the session turns out to be owned
by another live gateway (the route answers 409 ``session_owned_elsewhere``, with the owner's
advertised URL from the ledger), the request is sent on to that URL unchanged — method, path,
query, headers, body — and the owner's answer is streamed back as it comes.

The owner found is remembered for ``owner_recheck_s`` (as the owner remembers its own claim),
so the session's next requests go straight to it, without running the route here first. The
ledger stays the truth: the owner checks its ownership as always, and a remembered owner that
cannot take the request without having done anything (it is unreachable, no longer owns the
session, or is draining) sends the request down the ordinary path here instead.

The forwarded request carries ``X-Specgate-Forwarded-By``; a gateway that receives one never
forwards again, so a disagreement about the owner (ownership moving at that instant) cannot
loop: it is answered 503 ``owner_moved`` with ``Retry-After``. An owner that cannot be reached
(dead, but its lease not yet lapsed) is answered 503 ``owner_unreachable`` with ``Retry-After``:
the client retries the same request (with its ``Idempotency-Key``), and once the lease lapses
the gateway it reaches takes the session over and recovers its turn.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import httpx
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import read_body, replay
from gateway.errors import OwnedElsewhere, SpecgateError, Unavailable, error_response
from gateway.ledger.transitions import Fenced
from gateway.runtime import LruDict

log = logging.getLogger("specgate.forwarding")

PATH = re.compile(r"/v1/sessions/([^/]+)/.+")
HEADER = "x-specgate-forwarded-by"
# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx sets itself are not passed on.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                  b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
                  b"content-length"})


def applies(scope: Scope) -> bool:
    return scope["type"] == "http" and PATH.fullmatch(scope["path"]) is not None


# What a remembered owner answers, having done nothing, when the request must be served or
# forwarded from here after all (see the module's docstring).
_NOT_THERE = frozenset({"owner_moved", "draining"})


class Forwarder:
    """Runs ``app`` for a session request; forwards it when the session is owned elsewhere."""

    def __init__(self, gateway_id: str, timeout_s: float, remember_s: float = 0.0) -> None:
        self.gateway_id = gateway_id
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=2.0))
        self.remember_s = remember_s
        # session id → (its owner's URL, until when it is remembered: time.monotonic())
        self._owners: LruDict[str, tuple[str, float]] = LruDict(10_000)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return  # the client went away mid-request
        match = PATH.fullmatch(scope["path"])
        session_id = match.group(1) if match else ""
        forwarded = _header(scope, HEADER.encode())
        known = self._owners.get(session_id) if forwarded is None else None
        if (known is not None and time.monotonic() < known[1]
                and await self._forward(known[0], scope, body, send, remembered=True)):
            return
        self._owners.pop(session_id, None)
        held = _HeldAnswer(send)
        await app(scope, replay(body, receive), held.send)
        if held.code() == Fenced.code:  # the session left this gateway mid-request, which
            # recorded nothing: asked again, it is served, forwarded or refused as it now is
            held = _HeldAnswer(send)
            await app(scope, replay(body, receive), held.send)
        owner_url = held.owner_url()
        if owner_url is None:
            await held.release()
            return
        if forwarded is not None:
            await _refuse(send, Unavailable(
                "the session's owner changed while this request was forwarded; retry",
                code="owner_moved", status_code=503, forwarded_by=forwarded))
            return
        if self.remember_s > 0:
            self._owners[session_id] = (owner_url, time.monotonic() + self.remember_s)
        await self._forward(owner_url, scope, body, send)

    async def _forward(self, owner_url: str, scope: Scope, body: bytes, send: Send, *,
                       remembered: bool = False) -> bool:
        """Send the request to the owner and stream its answer back. For a ``remembered``
        owner, False (and nothing sent) when it did not take the request: it could not be
        connected to, or answered that it is not (or no longer) the one to serve it."""
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        headers.append((HEADER.encode(), self.gateway_id.encode()))
        url = owner_url + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as error:
            if remembered and isinstance(error, httpx.ConnectError):
                return False  # the request never left: it may be served from here
            log.warning("forwarding to %s failed: %r", owner_url, error)
            await _refuse(send, Unavailable(
                "the gateway that owns this session cannot be reached; retry (it is taken "
                "over once its lease lapses)", code="owner_unreachable", status_code=503,
                owner_url=owner_url))
            return True
        if remembered and response.status_code == 503:
            # small, and ours (error_response): read whole to see whether the owner did nothing
            body = await response.aread()
            await response.aclose()
            if _not_there(body):
                return False
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in _HOP]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return True
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in _HOP]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return True


def _not_there(body: bytes) -> bool:
    """Whether the owner's 503 says it did nothing, because it is not the one to serve the
    request."""
    try:
        return orjson.loads(body)["error"]["code"] in _NOT_THERE
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False


class _HeldAnswer:
    """Passes the route's answer through, except a 409, which is held back until its body
    says whether it is ``session_owned_elsewhere`` (then it is replaced by the owner's)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: list[Message] = []
        self._holding = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._holding = message["status"] == 409
        if self._holding:
            self._held.append(message)
        else:
            await self._send(message)

    def _error(self) -> dict[str, Any]:
        if not self._held:
            return {}
        body = b"".join(m.get("body", b"") for m in self._held[1:])
        try:
            error = orjson.loads(body)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return {}
        return error if isinstance(error, dict) else {}

    def code(self) -> str | None:
        return self._error().get("code")

    def owner_url(self) -> str | None:
        error = self._error()
        if error.get("code") != OwnedElsewhere.code:
            return None
        url = (error.get("details") or {}).get("owner_url")
        return url if isinstance(url, str) and url else None

    async def release(self) -> None:
        for message in self._held:
            await self._send(message)


async def _refuse(send: Send, error: SpecgateError) -> None:
    await error_response(error)({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None

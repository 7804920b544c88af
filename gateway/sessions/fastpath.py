"""``POST /v1/sessions/{id}/calls`` served before the framework's per-request machinery.

An agent issues a call every few words the user says, so this one route's latency is the
gateway's overhead on a tool call (`specgate bench gateway`, target ≤ 2 ms over the tool
alone). Measured on that path, FastAPI spent ~0.5 ms of it per request on work this route
does not need: solving the route's dependencies anew, six middlewares, and matching the path
against every route of the app.

The fast path answers only the requests it can answer exactly as the declared route would: a
JSON body that the route's model accepts, no query string, and a key the key cache already
knows. Anything else (another content type, ``?wait=``, a body that does not validate, an
unknown or missing key) goes to the FastAPI route with the body replayed, so every refusal is
the framework's own and the route in the OpenAPI schema stays the contract. Both paths run the
same handler (``sessions.service.issue``) under the same ``Idempotent`` wrapper in the thread
pool, and render errors through the same ``error_response``.
"""

from __future__ import annotations

import re

import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.asgi import read_body, replay
from gateway.auth.service import KeyCache
from gateway.calls.schemas import IssueCall
from gateway.deps import Idempotent, bearer_token
from gateway.errors import DATABASE_DOWN, SpecgateError, database_unavailable, error_response
from gateway.runtime import Runtime
from gateway.sessions import service

PATH = re.compile(r"/v1/sessions/([^/]+)/calls")
_JSON = ("application/json", "application/json; charset=utf-8")
_READ = (b"authorization", b"content-type", b"idempotency-key")


def matches(scope: Scope) -> bool:
    return (scope["type"] == "http" and scope["method"] == "POST"
            and not scope.get("root_path") and PATH.fullmatch(scope["path"]) is not None)


async def serve(state: State, app: ASGIApp, scope: Scope, receive: Receive,
                send: Send) -> None:
    """Answer a request ``matches`` accepted, or hand it to ``app`` (the FastAPI app's own
    handling); ``state`` is the app's (its runtime and key cache)."""
    body = await read_body(receive)
    if body is None:  # the client went away before it sent the whole body: nothing to answer
        return
    accepted = _accepted(scope, body)
    keys: KeyCache = state.keys
    principal = keys.cached(accepted[1]) if accepted is not None else None
    if accepted is None or principal is None:  # the route authenticates, and fills the cache
        await app(scope, replay(body, receive), send)
        return
    issue, _, idempotency_key = accepted
    runtime: Runtime = state.runtime
    session_id = scope["path"].split("/")[3]
    idem = Idempotent.of(runtime, principal, idempotency_key, "POST", scope["path"], body)

    def handle() -> Response:
        return idem.run(lambda: service.issue(runtime, principal.tenant, session_id, issue))

    try:
        response = await run_in_threadpool(handle)
    except SpecgateError as error:
        response = error_response(error)
    except DATABASE_DOWN as error:
        response = error_response(database_unavailable(error))
    await response(scope, receive, send)


def _accepted(scope: Scope, body: bytes) -> tuple[IssueCall, str, str | None] | None:
    """(the validated body, the bearer token, the Idempotency-Key) when the fast path can
    answer exactly as the declared route would; None otherwise."""
    if scope.get("query_string"):
        return None
    headers = _headers(scope)
    token = bearer_token(headers.get(b"authorization"))
    if token is None or headers.get(b"content-type", "").lower() not in _JSON:
        return None
    try:
        # orjson refuses what json.loads alone accepts (NaN, integers past 64 bits, UTF-16):
        # those go to the route, which reads the body with json.loads.
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            return None
        issue = IssueCall.model_validate(parsed)
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return issue, token, headers.get(b"idempotency-key")


def _headers(scope: Scope) -> dict[bytes, str]:
    """The headers this path reads, latin-1 decoded like Starlette's; the first of repeats."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _READ and name not in found:
            found[name] = value.decode("latin-1")
    return found

"""Errors the gateway answers with, one stable ``code`` each.

Every error a client can cause or observe is a ``SpecgateError``; the HTTP mapping lives in one
function (``error_response``, the app's handler and the hot route's fast path), which renders
``{"error": {"code", "message"}}``. Anything else that
escapes a route is a bug and becomes a 500 without hiding it from the logs.

    SpecgateError
     ├── BadRequest            400  bad_request
     │    └── InvalidArguments  422  invalid_arguments   (schema, placeholders, unknown tool)
     ├── Unauthorized          401  unauthorized
     ├── Forbidden             403  forbidden
     ├── NotFound              404  not_found
     ├── Conflict              409  conflict             (state does not allow it)
     │    ├── IdempotencyMismatch 409 idempotency_key_reused
     │    ├── OwnedElsewhere   409  session_owned_elsewhere (another live gateway owns it)
     │    └── ledger.transitions.StaleTransition 409 stale_state (another writer won)
     └── Unavailable           429/503 capacity          (bounded resources exhausted, the
                                                         database or an owner unreachable,
                                                         the gateway draining; Retry-After)

``final`` says whether an answer is the request's outcome, which an Idempotency-Key keeps for
its retries, or only where or when to ask (``Unavailable``, ``OwnedElsewhere``: not kept).

A database that cannot be reached (connection refused or lost, the pool or the server out of
connections) is not a bug: ``database_unavailable`` turns it into a 503 the client retries.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc
from starlette.responses import JSONResponse

RETRY_AFTER_S = 1
# What a database outage raises, through SQLAlchemy or straight from the driver.
DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.TimeoutError, psycopg.OperationalError)


class SpecgateError(Exception):
    status_code = 400
    code = "error"
    final = True

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


def error_response(error: SpecgateError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(error, Unavailable) else None
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=headers)


def draining() -> Unavailable:
    """What a gateway that is shutting down answers when asked for a session or turn it will
    not take: the retry reaches a gateway that stays."""
    return Unavailable("this gateway is shutting down and takes no new session or turn; retry",
                       code="draining", status_code=503)


def database_unavailable(error: Exception) -> Unavailable:
    """The answer to one of ``DATABASE_DOWN``: retry shortly; nothing was decided."""
    return Unavailable(f"the database cannot be reached ({type(error).__name__}); retry",
                       code="database_unavailable", status_code=503)


class BadRequest(SpecgateError):
    status_code = 400
    code = "bad_request"


class InvalidArguments(BadRequest):
    status_code = 422
    code = "invalid_arguments"


class Unauthorized(SpecgateError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SpecgateError):
    status_code = 403
    code = "forbidden"


class NotFound(SpecgateError):
    status_code = 404
    code = "not_found"


class Conflict(SpecgateError):
    status_code = 409
    code = "conflict"


class IdempotencyMismatch(Conflict):
    code = "idempotency_key_reused"


class OwnedElsewhere(Conflict):
    """Another live gateway owns the session (``details``: its id and its advertised URL).
    Not final: the gateway's front forwards the request to that URL, where it runs under the
    same Idempotency-Key."""

    code = "session_owned_elsewhere"
    final = False


class Unavailable(SpecgateError):
    """A bounded resource is exhausted, or the database or a session's owner cannot be
    reached; the client may retry after ``Retry-After``."""

    status_code = 429
    code = "capacity"
    final = False

    def __init__(self, message: str, *, status_code: int = 429, **details: Any) -> None:
        super().__init__(message, **details)
        self.status_code = status_code

"""``Idempotency-Key`` for every mutating request (invariant I6).

The first request with a key reserves it (a row without a response) and stores the response it
produced; the same key with the same body gets that stored response again; the same key with
another body is refused with 409; the same key while the first request still runs gets 409
``idempotency_in_progress``. Responses that say "try again" (429, 503, 5xx) are not stored, so
a retry really retries; nor is ``session_owned_elsewhere``, which the gateway turns into a
forward to the owner, where the request runs under the same key (the records are in the ledger,
shared by every gateway). Keys are scoped per tenant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from starlette.responses import Response

from gateway.errors import Conflict, IdempotencyMismatch, SpecgateError, error_response
from gateway.ledger import models

TABLE = models.table_of(models.IdempotencyRecord)


def fingerprint(method: str, path: str, body: bytes) -> str:
    try:
        canonical = orjson.dumps(orjson.loads(body or b"null"), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def run(ledger: Engine, tenant: str, key: str | None, request_hash: str,
        handler: Callable[[], tuple[int, Any]]) -> Response:
    """Run ``handler`` (returning status and JSON body) at most once per (tenant, key)."""
    if key is None:
        return _respond(handler)[0]
    if len(key) > 255:
        raise SpecgateError("Idempotency-Key is longer than 255 characters", code="bad_request")
    with ledger.begin() as conn:
        inserted = conn.execute(pg_insert(TABLE).values(
            tenant=tenant, key=key, request_hash=request_hash
        ).on_conflict_do_nothing().returning(TABLE.c.key)).first()
        if inserted is None:
            row = conn.execute(select(TABLE).where(TABLE.c.tenant == tenant, TABLE.c.key == key)
                               ).first()
    if inserted is None:
        assert row is not None
        if row.request_hash != request_hash:
            raise IdempotencyMismatch(f"Idempotency-Key {key!r} was used with another request")
        if row.status_code is None:
            raise Conflict(f"a request with Idempotency-Key {key!r} is still running",
                           code="idempotency_in_progress")
        return _json(row.status_code, row.body)
    where = (TABLE.c.tenant == tenant) & (TABLE.c.key == key)
    try:
        response, final = _respond(handler)
    except BaseException:
        with ledger.begin() as conn:  # a bug answered 500: release the key for a retry
            conn.execute(delete(TABLE).where(where))
        raise
    with ledger.begin() as conn:
        if not final:
            conn.execute(delete(TABLE).where(where))
        else:
            conn.execute(update(TABLE).where(where).values(
                status_code=response.status_code, body=orjson.loads(response.body)))
    return response


def _respond(handler: Callable[[], tuple[int, Any]]) -> tuple[Response, bool]:
    """The handler's answer, and whether it is final (kept for the key's retries)."""
    try:
        status, body = handler()
    except SpecgateError as error:
        response = error_response(error)  # with its Retry-After, when it has one
        return response, error.final
    return _json(status, body), status < 500 and status != 429

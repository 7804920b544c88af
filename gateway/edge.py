"""The edge: every request body is checked once, before any route (or the fast path, or a
forward to another gateway) sees it, so bad input is a clear 4xx and never reaches the ledger.

- A body larger than ``max_body_bytes`` is refused 413 ``body_too_large``, without reading
  past the limit.
- A JSON body must be JSON that Postgres and the gateway can keep exactly as sent. Refused with
  422 ``unstorable_value``, naming the field:
    - a NUL character in a string or a key (``jsonb`` has no place for it);
    - a lone UTF-16 surrogate (not text, so it cannot be stored as UTF-8);
    - an integer beyond 64 bits (the gateway's JSON encoder cannot write it back, and turning it
      into a float would change the argument);
    - a number too large for a double, and ``NaN`` or ``Infinity`` (not JSON).
- Nesting deeper than ``MAX_DEPTH`` is refused with 422 ``too_deep``.
- Malformed JSON is refused with 422 ``invalid_request``, as a body that does not match the
  API's schema.

Arguments are never altered to make them fit: a tool must see what the agent sent, or nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.types import Receive, Scope

from gateway.errors import InvalidArguments, SpecgateError

MAX_DEPTH = 32
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes: i64 and u64


class BodyTooLarge(SpecgateError):
    status_code = 413
    code = "body_too_large"


class _Refused(Exception):
    """Raised by the parser's hooks; the walk adds where."""


def _int(text: str) -> int:
    value = int(text)
    if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise _Refused(f"the integer {text[:24]}… does not fit in 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:24]} is too large for a double")
    return value


def _constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000), which Postgres cannot store"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone UTF-16 surrogate, which is not text"
    return None


def _walk(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArguments(f"{path or 'the body'} nests deeper than {MAX_DEPTH} levels",
                               code="too_deep", field=path)
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem:
            raise InvalidArguments(f"{path or 'the body'} holds {problem}",
                                   code="unstorable_value", field=path)
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            problem = _text_problem(key)
            if problem:
                raise InvalidArguments(f"a key of {path or 'the body'} holds {problem}",
                                       code="unstorable_value", field=path)
            _walk(item, where, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1)


def check_json(body: bytes) -> None:
    """Raise the 4xx a JSON body earns (see the module's docstring); None when it is fine."""
    try:
        value = json.loads(body, parse_int=_int, parse_float=_float,
                           parse_constant=_constant)
    except _Refused as refused:
        raise InvalidArguments(f"the body holds a value that cannot be stored: {refused}",
                               code="unstorable_value") from None
    except RecursionError:
        raise InvalidArguments(f"the body nests deeper than {MAX_DEPTH} levels",
                               code="too_deep") from None
    except (ValueError, UnicodeDecodeError) as error:  # as FastAPI answers a body it cannot read
        raise InvalidArguments(f"the body is not valid JSON: {error}", code="invalid_request",
                               errors=[{"loc": ["body"], "msg": str(error),
                                        "type": "json_invalid"}]) from None
    _walk(value, "", 0)


def is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_limited(receive: Receive, limit: int) -> bytes | None:
    """The whole body, None if the client went away first; ``BodyTooLarge`` past ``limit``
    bytes (what was read so far is dropped, the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than {limit} bytes "
                        "(SPECGATE_MAX_BODY_BYTES)", limit=limit)

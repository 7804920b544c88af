"""Placeholders: an argument ``"$3"`` is the whole result of client call 3, ``"$3.a.0.b"`` a
part of it (dict keys and list indexes). A string that should start with a literal ``$`` is
written ``"$$…"``. Placeholders are resolved when the dependency has a result."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"^\$(?P<call>[A-Za-z0-9_-]+)(?P<path>(?:\.[^.]+)*)$")


class PlaceholderError(ValueError):
    pass


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def references(arguments: Mapping[str, Any]) -> list[str]:
    """Client call ids named by placeholders, in order of appearance, without repeats."""
    found: list[str] = []
    for string in _walk(arguments):
        match = _PLACEHOLDER.match(string) if not string.startswith("$$") else None
        if match and match["call"] not in found:
            found.append(match["call"])
    return found


def _follow(result: Any, path: str, placeholder: str) -> Any:
    value = result
    for part in filter(None, path.split(".")):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(
            part
        ) < len(value):
            value = value[int(part)]
        else:
            raise PlaceholderError(f"placeholder {placeholder!r}: no {part!r} in the result")
    return value


def resolve(value: Any, results: Mapping[str, Any]) -> Any:
    """Replace every placeholder in ``value`` by the named part of ``results[client_id]``."""
    if isinstance(value, str):
        if value.startswith("$$"):
            return value[1:]
        match = _PLACEHOLDER.match(value)
        if match is None:
            return value
        if match["call"] not in results:
            raise PlaceholderError(f"placeholder {value!r}: call {match['call']!r} has no result")
        return _follow(results[match["call"]], match["path"], value)
    if isinstance(value, Mapping):
        return {key: resolve(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, results) for item in value]
    return value

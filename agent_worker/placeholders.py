"""Placeholders in a call's arguments as the agent reads them: ``"$3"`` is the whole result of
call 3, ``"$3.a.0.b"`` a part of it (dict keys and list indexes); ``"$$…"`` is a literal string
starting with ``$`` (it never matches: a model call id is digits).

The gateway resolves the placeholders of a turn's calls (``gateway.calls.placeholders``, part
of the REST contract); the agent is its client and keeps its own reading, on integer model
ids: a call's dependencies, the oracle's renumbering, and resolving the calls of an earlier,
committed turn the gateway no longer knows. Also the walks over JSON argument values they
share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"^\$(?P<call>[0-9]+)(?P<path>(?:\.[^.]+)*)$")


def parse(value: str) -> tuple[int, str] | None:
    """(call id, path such as ``".a.0"``) when ``value`` is a placeholder, else None."""
    match = _PLACEHOLDER.match(value)
    return (int(match["call"]), match["path"]) if match else None


def leaves(value: Any) -> Iterator[Any]:
    """The scalars of a JSON value (what is neither a dict nor a list), in order."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def strings(value: Any) -> Iterator[str]:
    """The strings of a JSON value, in order."""
    return (leaf for leaf in leaves(value) if isinstance(leaf, str))


def map_strings(value: Any, change: Callable[[str], Any]) -> Any:
    """``value`` with every string replaced by ``change(string)``."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [map_strings(item, change) for item in value]
    return value


def references(arguments: Any) -> list[int]:
    """Call ids named by placeholders, in order of appearance, without repeats."""
    found: list[int] = []
    for string in strings(arguments):
        named = parse(string)
        if named is not None and named[0] not in found:
            found.append(named[0])
    return found


def renumber(value: Any, ids: Mapping[int, int]) -> Any:
    """``value`` with placeholders naming a call in ``ids`` naming ``ids[call]`` instead."""
    def change(string: str) -> str:
        named = parse(string)
        if named is None or named[0] not in ids:
            return string
        return f"${ids[named[0]]}{named[1]}"

    return map_strings(value, change)


def resolve(value: Any, results: Mapping[int, Any]) -> Any:
    """``value`` with placeholders naming a call in ``results`` replaced by that part of its
    result. The others are left as they are — a path the result lacks too: the gateway then
    refuses the call with its own message."""
    def change(string: str) -> Any:
        named = parse(string)
        if named is None or named[0] not in results:
            return string
        found = results[named[0]]
        for part in filter(None, named[1].split(".")):
            if isinstance(found, dict) and part in found:
                found = found[part]
            elif (isinstance(found, list) and part.lstrip("-").isdigit()
                  and -len(found) <= int(part) < len(found)):
                found = found[int(part)]
            else:
                return string
        return found

    return map_strings(value, change)

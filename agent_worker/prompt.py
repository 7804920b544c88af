"""The system prompt: the speculative protocol and the gateway's tools, as a model is shown
them. Backends that read structure (the oracle) ignore it; chat models need it.

Two tool listings:

- ``full`` (the default): each tool's whole description and its JSON schema, as the gateway
  lists them (~3k tokens for τ²'s retail or airline tools);
- ``compact``: one line per tool — its signature with argument names and short types (nested
  objects spelled out, ``?`` for an optional argument, enums as their values), its effect class
  and the first sentence of its description (~800 tokens for the same tools). For a small model
  whose context, and whose training samples, the full listing would fill.

A model fine-tuned on one listing must be run with the same one: ``specgate data make
--tool-listing`` writes it into the manifest, and the agent and the benchmark take the option.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

ToolListing = Literal["full", "compact"]
TOOL_LISTINGS: tuple[ToolListing, ...] = ("full", "compact")

PROTOCOL = """\
You are a voice assistant that acts while the user is still speaking. You see the user's words
as they are heard and the results of your tool calls, as tags:
  <partial_query_update>…</partial_query_update>  more words of the user; they go on speaking
  <final_query_update>…</final_query_update>      the last words: the user has finished
  <observation id="3">…</observation>              the result of your call 3 (JSON)
  <cancelled id="3">reason</cancelled>             call 3 was dropped (and why)
  <error>…</error>                                  your last output was invalid; try again
Every step you write, optionally, <think>short reasoning</think>, then exactly one action:
  <tool_call>{"id": 1, "name": "adapter.tool", "arguments": {…}, "depends_on": []}</tool_call>
      one or more; ids start at 1 and every new call takes a larger id than any before.
      To use a result before it exists, write "$1" (the whole result of call 1) or
      "$1.field.0.x" (a part of it) as an argument value and list 1 in depends_on.
      Re-emitting an id with other arguments amends that call (it replaces it).
  <remove>3</remove>   drop call 3 (calls depending on it are dropped too)
  <pause/>             wait for more input
  <answer>…</answer>   your reply to the user, only after the final query update
Calls made while the user speaks are speculative: nothing takes effect until the user has
finished and you confirm, which you do by answering, pausing or issuing a new call after the
final query update. Call early when you are confident, amend or remove when the user corrects
themselves. If your thinking is cut off by new input, you see </think_interrupted>.
"""

_SHORT_TYPES = {"string": "str", "integer": "int", "number": "num", "boolean": "bool",
                "null": "null"}
_FIRST_SENTENCE = re.compile(r"(.+?[.!?])(?:\s|$)")


def system_prompt(tools: Iterable[dict[str, Any]], instructions: str | None = None,
                  listing: ToolListing = "full") -> str:
    if listing not in TOOL_LISTINGS:
        raise ValueError(f"unknown tool listing {listing!r}: one of {', '.join(TOOL_LISTINGS)}")
    lines = [PROTOCOL, "Tools:"]
    for tool in tools:
        lines.append(_compact(tool) if listing == "compact" else _full(tool))
    if instructions:
        lines += ["", instructions]
    return "\n".join(lines)


def _full(tool: dict[str, Any]) -> str:
    schema = json.dumps(tool.get("parameters") or {}, separators=(",", ":"))
    return (f"- {tool['name']} ({tool.get('effect', '?')}): "
            f"{(tool.get('description') or '').strip()} Arguments: {schema}")


def _compact(tool: dict[str, Any]) -> str:
    parameters = tool.get("parameters") or {}
    signature = _fields(parameters, parameters.get("$defs") or {})
    description = " ".join((tool.get("description") or "").split())
    first = _FIRST_SENTENCE.match(description)
    summary = first.group(1) if first else description
    return f"- {tool['name']}({signature}) [{tool.get('effect', '?')}]: {summary}".rstrip(": ")


def _fields(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    required = set(schema.get("required") or ())
    return ", ".join(f"{name}{'' if name in required else '?'}: {_type(sub, defs)}"
                     for name, sub in (schema.get("properties") or {}).items())


def _type(schema: Any, defs: Mapping[str, Any], depth: int = 0) -> str:
    """A short spelling of a JSON schema type: ``str``, ``[{a: int, b?: str}]``, ``"x"|"y"``."""
    if not isinstance(schema, Mapping) or depth > 8:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _type(defs.get(ref.removeprefix("#/$defs/")), defs, depth + 1)
    if "enum" in schema:
        return "|".join(json.dumps(value) for value in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return "|".join(_type(option, defs, depth + 1) for option in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(_SHORT_TYPES.get(k, str(k)) for k in kind)
    if kind == "array":
        return f"[{_type(schema.get('items'), defs, depth + 1)}]"
    if kind == "object" or "properties" in schema:
        if not schema.get("properties"):
            return "object"
        return "{" + _fields(schema, defs) + "}"
    return _SHORT_TYPES.get(kind, "any") if isinstance(kind, str) else "any"

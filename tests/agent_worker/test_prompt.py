"""The system prompt's tool listings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_worker.prompt import PROTOCOL, system_prompt

BOOK = {
    "name": "air.book", "effect": "sensitive",
    "description": "Book flights for passengers. Pays at once.\nMore details here.",
    "parameters": {
        "$defs": {"Passenger": {"properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
                                "required": ["name"], "type": "object"}},
        "properties": {
            "user_id": {"type": "string", "description": "The user."},
            "cabin": {"enum": ["economy", "business"], "type": "string"},
            "passengers": {"items": {"$ref": "#/$defs/Passenger"}, "type": "array"},
            "bags": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "extras": {"type": "object"},
            "price": {"type": "number"}},
        "required": ["user_id", "cabin", "passengers"], "type": "object"}}
LIST = {"name": "air.airports", "effect": "safe", "description": "",
        "parameters": {"properties": {}, "type": "object"}}


def test_the_compact_listing_is_one_signature_line_per_tool() -> None:
    prompt = system_prompt([BOOK, LIST], listing="compact")
    assert prompt.startswith(PROTOCOL)
    assert prompt.splitlines()[-2:] == [
        '- air.book(user_id: str, cabin: "economy"|"business", '
        'passengers: [{name: str, age?: int}], bags?: int|null, extras?: object, '
        'price?: num) [sensitive]: Book flights for passengers.',
        "- air.airports() [safe]"]


def test_the_full_listing_carries_the_whole_schema() -> None:
    prompt = system_prompt([BOOK], "Be brief.")
    listed, instructions = prompt.split("Tools:\n", 1)[1].split("\n\n")
    assert listed.startswith("- air.book (sensitive): Book flights for passengers. Pays at "
                             "once.\nMore details here. Arguments: ")
    schema: dict[str, Any] = json.loads(listed.split(" Arguments: ", 1)[1])
    assert schema == BOOK["parameters"] and instructions == "Be brief."


def test_an_unknown_listing_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tool listing 'short'"):
        system_prompt([BOOK], listing="short")  # type: ignore[arg-type]

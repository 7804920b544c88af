"""Placeholders as the agent reads them: renumbered for the oracle, resolved from the results
of calls in an earlier turn (the rest left for the gateway)."""

from __future__ import annotations

from agent_worker import placeholders


def test_resolve_replaces_only_calls_with_results_and_paths_they_have() -> None:
    results = {1: {"order_id": "O-1", "items": [{"sku": "a"}, {"sku": "b"}]}}
    arguments = {"order": "$1.order_id", "last": "$1.items.-1.sku", "all": ["$1"],
                 "later": "$2.x", "literal": "$$1", "missing": "$1.nope",
                 "out_of_range": "$1.items.5.sku", "n": 3}
    assert placeholders.resolve(arguments, results) == {
        "order": "O-1", "last": "b", "all": [results[1]], "later": "$2.x", "literal": "$$1",
        "missing": "$1.nope", "out_of_range": "$1.items.5.sku", "n": 3}


def test_renumber_and_references() -> None:
    arguments = {"a": "$1.x", "b": ["$3", "$1"], "c": "$$3", "d": 7}
    assert placeholders.references(arguments) == [1, 3]
    assert placeholders.renumber(arguments, {1: 4}) == {"a": "$4.x", "b": ["$3", "$4"],
                                                        "c": "$$3", "d": 7}

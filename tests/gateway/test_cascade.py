"""Cancel with cascade over depends_on, replay of later calls, conflicts, read-your-writes and
isolation between sessions."""

from __future__ import annotations

from typing import Any

from tests.gateway.helpers import shop_state
from tests.gateway.test_turns import _reference

ANN, BOB = {"customer": "ann"}, {"customer": "bob"}


def test_cascade_cancel_over_a_dependency_chain(shop: Any) -> None:
    api, before = shop.api, shop_state(shop.url)
    sid, tid = api.session()
    first = api.call(sid, 1, "create_order", arguments=ANN)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "espresso"})
    api.call(sid, 3, "add_item", arguments={"order_id": "$2.order_id", "sku": "filter"},
             depends_on=[2])
    api.call(sid, 4, "get_order", arguments={"order_id": "$1.order_id"})
    changed = api.cancel(first["id"])
    assert sorted(c["client_call_id"] for c in changed) == ["1", "2", "3", "4"]
    assert {c["status"] for c in changed} == {"cancelled"}
    assert api.commit(sid, tid)["status"] == "committed"
    assert shop_state(shop.url) == before


def test_replay_after_cancelling_a_middle_call(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ANN)
    middle = api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "kettle"})
    api.call(sid, 3, "create_order", arguments=BOB)
    api.call(sid, 4, "add_item", arguments={"order_id": "$3.order_id", "sku": "filter"})
    changed = api.cancel(middle["id"])
    assert [c["client_call_id"] for c in changed] == ["2"]
    calls = {c["client_call_id"]: c for c in api.get(f"/v1/sessions/{sid}").json()["turns"][0]
             ["calls"]}
    assert calls["3"]["status"] == calls["4"]["status"] == "held"
    assert calls["3"]["replays"] == calls["4"]["replays"] == 1
    api.commit(sid, tid)
    assert shop_state(shop.url) == _reference(shop, [
        ("1", "create_order", ANN), ("3", "create_order", BOB),
        ("4", "add_item", {"order_id": "$3.order_id", "sku": "filter"}),
    ])


def test_replay_with_another_result_is_a_conflict_and_cascades(shop: Any) -> None:
    api, before = shop.api, shop_state(shop.url)
    sid, tid = api.session()
    first = api.call(sid, 1, "create_order", arguments=ANN)
    second = api.call(sid, 2, "create_order", arguments=ANN)
    assert second["result"]["order_id"] == "O-ann-2"
    api.call(sid, 3, "add_item", arguments={"order_id": "$2.order_id", "sku": "filter"})
    changed = {c["client_call_id"]: c for c in api.cancel(first["id"])}
    assert changed["1"]["status"] == "cancelled"
    assert changed["2"]["status"] == "conflict"
    assert changed["2"]["error"]["replayed"]["result"]["order_id"] == "O-ann-1"
    assert changed["3"]["status"] == "cancelled"
    api.commit(sid, tid)
    assert shop_state(shop.url) == before


def test_read_your_writes_inside_a_turn_and_isolation_outside(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ANN)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "grinder"})
    mine = api.call(sid, 3, "get_order", arguments={"order_id": "O-ann-1"})
    assert mine["status"] == "succeeded" and mine["result"]["items"][0]["sku"] == "grinder"
    other_sid, _ = api.session()
    theirs = api.call(other_sid, 1, "get_order", arguments={"order_id": "O-ann-1"})
    assert theirs["status"] == "failed" and theirs["error"]["code"] == "tool_retry"
    stock = api.call(other_sid, 2, "list_products")["result"]
    assert next(p for p in stock if p["sku"] == "grinder")["stock"] == 3  # not yet taken
    api.commit(sid, tid)
    seen = api.call(other_sid, 3, "get_order", arguments={"order_id": "O-ann-1"})
    assert seen["status"] == "succeeded" and seen["result"]["items"][0]["sku"] == "grinder"


def test_a_row_held_by_another_turn_answers_busy(shop: Any) -> None:
    """Two open turns want the last kettle: the second waits lock_timeout and is told 'busy'
    (retry once the first turn is decided), not an internal error."""
    api = shop.api
    first_sid, first_tid = api.session()
    api.call(first_sid, 1, "create_order", arguments=ANN)
    api.call(first_sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "kettle"})
    second_sid, _ = api.session()
    api.call(second_sid, 1, "create_order", arguments=BOB)
    waiting = api.call(second_sid, 2, "add_item",
                       arguments={"order_id": "$1.order_id", "sku": "kettle"})
    assert waiting["status"] == "failed" and waiting["error"]["code"] == "busy"
    api.commit(first_sid, first_tid)
    retry = api.call(second_sid, 3, "add_item",
                     arguments={"order_id": "$1.order_id", "sku": "kettle"})
    assert retry["status"] == "failed" and retry["error"]["code"] == "tool_failed"  # sold out

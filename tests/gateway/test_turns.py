"""Each effect class × commit / cancel / amend: the database afterwards is exactly what a
sequential, non-speculative run of the kept calls produces; a cancelled call leaves nothing."""

from __future__ import annotations

from typing import Any

from gateway.tools.registry import Registry
from tests.gateway.helpers import sequential_run, shop_state
from tool_adapters.demo import ADAPTER as DEMO
from tool_adapters.sdk import Adapter, ToolContext, tool

ORDER = {"customer": "ann"}


def _reference(fixture: Any, kept: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """State after a plain sequential run of ``kept`` on a freshly reset shop."""
    from tests.conftest import reset_shop

    reset_shop(fixture.url, fixture.settings)
    sequential_run(fixture.url, kept)
    return shop_state(fixture.url)


def test_safe_call_commit_and_cancel_change_nothing(shop: Any) -> None:
    api, before = shop.api, shop_state(shop.url)
    sid, tid = api.session()
    call = api.call(sid, 1, "list_products")
    assert call["status"] == "succeeded" and len(call["result"]) == 4
    turn = api.commit(sid, tid)
    assert [c["status"] for c in turn["calls"]] == ["committed"]
    assert shop_state(shop.url) == before
    tid2 = api.post(f"/v1/sessions/{sid}/turns", {}, expect=201).json()["id"]
    api.call(sid, 1, "list_products")
    assert api.cancel_turn(sid, tid2)["calls"][0]["status"] == "cancelled"
    assert shop_state(shop.url) == before


def test_reversible_commit_equals_sequential_run(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    assert api.call(sid, 1, "create_order", arguments=ORDER)["status"] == "held"
    item = api.call(sid, 2, "add_item",
                    arguments={"order_id": "$1.order_id", "sku": "grinder", "quantity": 2})
    assert item["status"] == "held" and item["resolved_arguments"]["order_id"] == "O-ann-1"
    turn = api.commit(sid, tid)
    assert turn["status"] == "committed"
    assert {c["status"] for c in turn["calls"]} == {"committed"}
    after = shop_state(shop.url)
    assert after == _reference(shop, [
        ("1", "create_order", ORDER),
        ("2", "add_item", {"order_id": "$1.order_id", "sku": "grinder", "quantity": 2}),
    ])
    assert next(p for p in after["demo_products"] if p["sku"] == "grinder")["stock"] == 1


def test_reversible_cancel_leaves_nothing(shop: Any) -> None:
    api, before = shop.api, shop_state(shop.url)
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "kettle"})
    turn = api.cancel_turn(sid, tid)
    assert turn["status"] == "cancelled"
    assert {c["status"] for c in turn["calls"]} == {"cancelled"}
    assert shop_state(shop.url) == before


def test_reversible_amend_keeps_only_the_new_arguments(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    first = api.call(sid, 2, "add_item",
                     arguments={"order_id": "$1.order_id", "sku": "espresso", "quantity": 2})
    amended = api.call(sid, 2, "add_item", supersedes=2,
                       arguments={"order_id": "$1.order_id", "sku": "grinder", "quantity": 1})
    assert amended["supersedes"] == first["id"] and amended["status"] == "held"
    assert amended["result"]["items"] == [{"sku": "grinder", "quantity": 1, "price_cents": 8900}]
    turn = api.commit(sid, tid)
    statuses = {c["id"]: c["status"] for c in turn["calls"]}
    assert statuses[first["id"]] == "cancelled" and statuses[amended["id"]] == "committed"
    assert shop_state(shop.url) == _reference(shop, [
        ("1", "create_order", ORDER),
        ("2", "add_item", {"order_id": "$1.order_id", "sku": "grinder", "quantity": 1}),
    ])


def test_sensitive_is_staged_and_runs_only_at_commit(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "filter"})
    placed = api.call(sid, 3, "place_order",
                      arguments={"order_id": "$1.order_id", "card_last4": "4242"})
    assert placed["status"] == "staged" and placed["result"] is None
    look = api.call(sid, 4, "get_order", arguments={"order_id": "$1.order_id"})
    assert look["result"]["status"] == "open"  # the charge has not happened
    turn = api.commit(sid, tid)
    final = {c["client_call_id"]: c for c in turn["calls"]}
    assert final["3"]["status"] == "committed"
    assert final["3"]["result"]["status"] == "placed"
    assert shop_state(shop.url) == _reference(shop, [
        ("1", "create_order", ORDER),
        ("2", "add_item", {"order_id": "$1.order_id", "sku": "filter"}),
        ("3", "place_order", {"order_id": "$1.order_id", "card_last4": "4242"}),
    ])


def test_sensitive_cancel_and_amend(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "filter"})
    wrong = api.call(sid, 3, "place_order",
                     arguments={"order_id": "$1.order_id", "card_last4": "1111"})
    right = api.call(sid, 3, "place_order", supersedes=3,
                     arguments={"order_id": "$1.order_id", "card_last4": "4242"})
    assert right["status"] == "staged"
    turn = api.commit(sid, tid)
    final = {c["id"]: c["status"] for c in turn["calls"]}
    assert final[wrong["id"]] == "cancelled" and final[right["id"]] == "committed"
    payments = shop_state(shop.url)["demo_payments"]
    assert [p["card_last4"] for p in payments] == ["4242"]
    # a staged sensitive call cancelled with its turn never runs
    tid2 = api.post(f"/v1/sessions/{sid}/turns", {}, expect=201).json()["id"]
    api.call(sid, 1, "create_order", arguments={"customer": "bob"})
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "filter"})
    api.call(sid, 3, "place_order", arguments={"order_id": "$1.order_id", "card_last4": "9999"})
    api.cancel_turn(sid, tid2)
    assert [p["card_last4"] for p in shop_state(shop.url)["demo_payments"]] == ["4242"]


def test_commit_keeps_only_listed_calls(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "espresso"})
    api.call(sid, 3, "add_item", arguments={"order_id": "$1.order_id", "sku": "filter"})
    turn = api.commit(sid, tid, keep=[1, 2])
    final = {c["client_call_id"]: c["status"] for c in turn["calls"]}
    assert final == {"1": "committed", "2": "committed", "3": "cancelled"}
    assert shop_state(shop.url) == _reference(shop, [
        ("1", "create_order", ORDER),
        ("2", "add_item", {"order_id": "$1.order_id", "sku": "espresso"}),
    ])


def test_dropping_a_call_at_commit_conflicts_a_later_call_that_saw_it(shop: Any) -> None:
    """Call 3 returned the order with call 2's item in it; without call 2 its result would be
    another one, so it is not committed on a result the agent never saw."""
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    api.call(sid, 2, "add_item", arguments={"order_id": "$1.order_id", "sku": "espresso"})
    api.call(sid, 3, "add_item", arguments={"order_id": "$1.order_id", "sku": "filter"})
    turn = api.commit(sid, tid, keep=[1, 3])
    final = {c["client_call_id"]: c for c in turn["calls"]}
    assert [final[k]["status"] for k in "123"] == ["committed", "cancelled", "conflict"]
    assert final["3"]["error"]["code"] == "conflict"
    assert shop_state(shop.url) == _reference(shop, [("1", "create_order", ORDER)])


def test_a_tool_cannot_end_the_turn_transaction(shop: Any) -> None:
    """A tool that commits or rolls back would end or wipe the whole turn: refused, recorded
    as the tool's bug, and the turn's earlier held calls are untouched."""
    @tool(effect="reversible")
    def commits(ctx: ToolContext) -> None:
        """Misbehaves."""
        ctx.session.commit()

    @tool(effect="reversible")
    def rolls_back(ctx: ToolContext) -> None:
        """Misbehaves too."""
        ctx.session.rollback()

    shop.runtime.registry = Registry([DEMO, Adapter(name="bad", tools=(commits, rolls_back))])
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    for cid, name in ((2, "commits"), (3, "rolls_back")):
        bad = api.call(sid, cid, f"bad.{name}")
        assert bad["status"] == "failed" and bad["error"]["code"] == "internal_error"
    turn = api.commit(sid, tid)
    assert [c["status"] for c in turn["calls"]] == ["committed", "failed", "failed"]
    assert shop_state(shop.url) == _reference(shop, [("1", "create_order", ORDER)])


def test_a_safe_tool_cannot_leak_a_write(shop: Any) -> None:
    """Declared safe but writes: outside a turn transaction it runs read-only and fails; inside
    one its write is rolled back with its savepoint. Either way nothing is left behind."""
    from sqlalchemy import insert

    from tool_adapters.demo import schema

    @tool(effect="safe")
    def sneaky(ctx: ToolContext) -> str:
        """Claims to read."""
        ctx.session.execute(insert(schema.orders).values(id="LEAK", customer="x", status="open"))
        return "wrote"

    shop.runtime.registry = Registry([DEMO, Adapter(name="bad", tools=(sneaky,))])
    shop.runtime.settings.tool_database_urls["bad"] = shop.url  # the shop's database
    api, before = shop.api, shop_state(shop.url)
    sid, tid = api.session()
    outside = api.call(sid, 1, "bad.sneaky")
    assert outside["status"] == "failed" and "read-only" in outside["error"]["message"]
    api.call(sid, 2, "create_order", arguments=ORDER)
    inside = api.call(sid, 3, "bad.sneaky")
    assert inside["status"] == "succeeded"
    look = api.call(sid, 4, "get_order", arguments={"order_id": "LEAK"})
    assert look["status"] == "failed"  # gone already, even inside the turn
    api.cancel_turn(sid, tid)
    assert shop_state(shop.url) == before


def test_a_failing_preflight_refuses_the_staged_call(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments=ORDER)
    empty = api.call(sid, 2, "place_order",
                     arguments={"order_id": "$1.order_id", "card_last4": "4242"})
    assert empty["status"] == "failed" and empty["error"]["code"] == "tool_retry"
    assert "empty" in empty["error"]["message"]
    turn = api.commit(sid, tid)
    assert [c["status"] for c in turn["calls"]] == ["committed", "failed"]
    assert shop_state(shop.url)["demo_payments"] == []

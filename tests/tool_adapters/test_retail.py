"""The retail adapter against τ²-bench's own retail environment, on a real Postgres.

τ²'s seed data is loaded once into a database of this module; each scenario runs in a turn
rolled back at the end, its tools called the way the gateway's ``db`` runner calls them
(``tau2_support``). Every step's outcome and the final DB hash are compared with τ²'s replay of
the same actions, worked out in another process meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from lab.conformance import reference
from tests.tool_adapters.tau2_support import (
    Case,
    Outcome,
    Turn,
    assert_classified_as_documented,
    assert_typed_like_tau2,
    db_hash,
    differences,
    differences_each_in_a_turn,
    open_turn,
    replayed_by_tau2,
    seeded_engine,
    task_cases,
)
from tool_adapters.retail import ADAPTER
from tool_adapters.retail.tau2data import export_tau2_db
from tool_adapters.sdk import Effect, ToolContext, ToolError, ToolFailed, ToolRetry
from tool_adapters.tau2_common.tau2data import user_positions

pytest.importorskip("tau2")  # the reference side

DOMAIN = "retail"
TASKS = task_cases(DOMAIN)
EFFECTS = {
    "calculate": Effect.SAFE,
    "find_user_id_by_email": Effect.SAFE,
    "find_user_id_by_name_zip": Effect.SAFE,
    "get_order_details": Effect.SAFE,
    "get_product_details": Effect.SAFE,
    "get_user_details": Effect.SAFE,
    "list_all_product_types": Effect.SAFE,
    "transfer_to_human_agents": Effect.SAFE,
    "modify_pending_order_address": Effect.REVERSIBLE,
    "modify_user_address": Effect.REVERSIBLE,
    "cancel_pending_order": Effect.SENSITIVE,
    "exchange_delivered_order_items": Effect.SENSITIVE,
    "modify_pending_order_items": Effect.SENSITIVE,
    "modify_pending_order_payment": Effect.SENSITIVE,
    "return_delivered_order_items": Effect.SENSITIVE,
}


@pytest.fixture(scope="module")
def tau2_runs() -> Iterator[Mapping[str, Future[reference.ReferenceRun]]]:
    """τ²'s replay of every task and scenario, by id, started before anything else."""
    with replayed_by_tau2(DOMAIN, [*SCENARIOS, *TASKS]) as runs:
        yield runs


@pytest.fixture(scope="module")
def engine(pg_home: Path, tau2_runs: Mapping[str, Future[Any]]) -> Iterator[Engine]:
    """A database holding τ²'s retail seed, loaded and committed once."""
    with seeded_engine(pg_home, DOMAIN) as engine:
        yield engine


@pytest.fixture(scope="module")
def seed_hash() -> str:
    return reference.db_hash(DOMAIN, reference.seed_data(DOMAIN))


@pytest.fixture
def turn(engine: Engine) -> Iterator[Turn]:
    """A turn on the shop, rolled back after the test."""
    with open_turn(engine, ADAPTER) as turn:
        yield turn


# --- the data -------------------------------------------------------------------------------


def test_load_then_export_gives_tau2s_seed_hash(turn: Turn, seed_hash: str) -> None:
    seed = reference.seed_data(DOMAIN)
    assert reference.db_hash(DOMAIN, export_tau2_db(turn.conn)) == seed_hash
    assert db_hash(turn.conn, DOMAIN) == seed_hash
    assert export_tau2_db(turn.conn) == reference.normalized(DOMAIN, seed)


def test_orders_must_be_listed_exactly_once_by_their_user() -> None:
    """What ``load_tau2_db`` checks before it inserts an order (τ²'s data passes, above)."""
    seed = reference.seed_data(DOMAIN)
    user = next(iter(seed["users"].values()))
    positions = user_positions(seed["users"], seed["orders"], "orders")
    assert [positions[order_id] for order_id in user["orders"]] == list(range(len(user["orders"])))
    for orders in (user["orders"][1:], [*user["orders"], user["orders"][0]]):
        users = {**seed["users"], user["user_id"]: {**user, "orders": orders}}
        with pytest.raises(ValueError, match="listed"):
            user_positions(users, seed["orders"], "orders")


# --- every task's gold actions ----------------------------------------------------------------


def test_every_task_matches_tau2_step_by_step_and_in_the_final_hash(
        engine: Engine, seed_hash: str, tau2_runs: Mapping[str, Future[Any]]) -> None:
    """All tasks in one test, each in its own turn rolled back afterwards."""
    problems = differences_each_in_a_turn(engine, ADAPTER, TASKS, tau2_runs, seed_hash)
    assert problems == [], "\n".join(problems)
    assert len(TASKS) == 114, "τ²'s retail task set changed: update this number"


# --- scripted scenarios: error paths and τ²'s quirks, checked against τ² the same way ---------

ADDRESS = {"address1": "1 Main St", "address2": "", "city": "Austin", "state": "TX",
           "country": "USA", "zip": "73301"}

CANCEL = [
    ("cancel_pending_order", {"order_id": "#W3113816", "reason": "no longer needed"}),  # delivered
    ("cancel_pending_order", {"order_id": "#W6779827", "reason": "changed my mind"}),
    ("cancel_pending_order", {"order_id": "#W0000000", "reason": "no longer needed"}),
    # Paid by gift card: the refund goes back on the card at once.
    ("cancel_pending_order", {"order_id": "#W6779827", "reason": "ordered by mistake"}),
    ("cancel_pending_order", {"order_id": "#W6779827", "reason": "ordered by mistake"}),
    ("get_user_details", {"user_id": "ethan_lopez_6291"}),
    ("cancel_pending_order", {"order_id": "#W2443586", "reason": "no longer needed"}),  # paypal
]


def _items(order_id: str, item_ids: list[str], new_item_ids: list[str],
           payment_method_id: str) -> tuple[str, dict[str, Any]]:
    return ("modify_pending_order_items", {"order_id": order_id, "item_ids": item_ids,
                                           "new_item_ids": new_item_ids,
                                           "payment_method_id": payment_method_id})


MODIFY_ITEMS = [
    # #W9318778 holds two variants of product 3821016478 and was paid by gift card. The first
    # pair turns 5669664287 into 3076708684; τ² then takes the first item with id 3076708684
    # *now*, the one just changed, and prices every changed item like the last variant checked.
    _items("#W9318778", ["5669664287", "3076708684"], ["3076708684", "9534205511"],
           "gift_card_7728021"),
    _items("#W9318778", ["2143041831"], ["2143041831"], "gift_card_7728021"),  # only once
    ("modify_pending_order_address", {"order_id": "#W9318778", **ADDRESS}),  # still allowed
    ("modify_pending_order_payment", {"order_id": "#W9318778",
                                      "payment_method_id": "credit_card_7862034"}),
    ("get_user_details", {"user_id": "lucas_martin_4549"}),
    # #W9093821 holds 3557711149 (product 2524789262) twice, paid by credit card.
    _items("#W9093821", ["3557711149"] * 3, ["3928046918"] * 3, "credit_card_7422485"),
    _items("#W9093821", ["3557711149"], [], "credit_card_7422485"),
    _items("#W9093821", ["3557711149"], ["3557711149"], "credit_card_7422485"),
    _items("#W9093821", ["3557711149"], ["8030558068"], "credit_card_7422485"),  # unavailable
    _items("#W9093821", ["3557711149"], ["9534205511"], "credit_card_7422485"),  # other product
    _items("#W9093821", ["3557711149"], ["3928046918"], "gift_card_7728021"),  # not theirs
    _items("#W8327915", ["1327854740"], ["8302289002"], "gift_card_4855547"),  # 6.0 left
    _items("#W9093821", ["3557711149", "3557711149"], ["3928046918", "8084436579"],
           "credit_card_7422485"),
]

MODIFY_PAYMENT = [
    ("modify_pending_order_payment", {"order_id": "#W6779827",
                                      "payment_method_id": "credit_card_9789590"}),
    ("modify_pending_order_payment", {"order_id": "#W6779827",
                                      "payment_method_id": "gift_card_7219486"}),
    ("get_user_details", {"user_id": "ethan_lopez_6291"}),
    ("modify_pending_order_payment", {"order_id": "#W2443586",
                                      "payment_method_id": "gift_card_2742113"}),  # 22.0 left
    ("modify_pending_order_payment", {"order_id": "#W2443586",
                                      "payment_method_id": "paypal_7859314"}),  # the same
    ("modify_pending_order_payment", {"order_id": "#W2443586",
                                      "payment_method_id": "paypal_0000000"}),
    ("modify_pending_order_payment", {"order_id": "#W2611340",
                                      "payment_method_id": "gift_card_1725971"}),  # processed
    ("modify_pending_order_payment", {"order_id": "#W1080318",
                                      "payment_method_id": "gift_card_3749819"}),  # covers it
    ("get_user_details", {"user_id": "aarav_nguyen_7344"}),
]


def _exchange(order_id: str, item_ids: list[str], new_item_ids: list[str],
              payment_method_id: str) -> tuple[str, dict[str, Any]]:
    return ("exchange_delivered_order_items", {"order_id": order_id, "item_ids": item_ids,
                                               "new_item_ids": new_item_ids,
                                               "payment_method_id": payment_method_id})


def _return(order_id: str, item_ids: list[str],
            payment_method_id: str) -> tuple[str, dict[str, Any]]:
    return ("return_delivered_order_items", {"order_id": order_id, "item_ids": item_ids,
                                             "payment_method_id": payment_method_id})


DELIVERED = [
    _exchange("#W9093821", ["3557711149"], ["3928046918"], "credit_card_7422485"),  # pending
    # #W2842410 holds 9799386954 (product 2892623495) twice, paid by paypal.
    _exchange("#W2842410", ["9799386954"] * 3, ["1199058591"] * 3, "paypal_4751854"),
    _exchange("#W2842410", ["9799386954"], [], "paypal_4751854"),
    _exchange("#W2842410", ["9799386954"], ["6574183535"], "paypal_4751854"),  # unavailable
    _exchange("#W2842410", ["9799386954", "9799386954"], ["7579176349", "1199058591"],
              "paypal_4751854"),
    _return("#W2842410", ["9799386954"], "paypal_4751854"),  # already exchanged
    # #W3113816: the gift card (36.0) cannot pay the difference (62.21); the card it was paid
    # with can, and the other item is priced down at the same time.
    _exchange("#W3113816", ["4422467033"], ["3877338112"], "gift_card_6023546"),
    _exchange("#W3113816", ["4422467033"], ["9534205511"], "credit_card_5869505"),  # other product
    _exchange("#W3113816", ["4422467033", "2206116040"], ["3877338112", "1719127154"],
              "credit_card_5869505"),
    # #W1840144 was paid by paypal; its credit card is not the original payment method.
    _return("#W1840144", ["8590708195"], "credit_card_3240550"),
    _return("#W1840144", ["8590708195"] * 3, "paypal_2306935"),
    _return("#W1840144", ["8590708195", "8384507844", "8590708195"], "paypal_2306935"),
    _return("#W3069600", ["8551474201"], "gift_card_7250692"),  # a gift card is always fine
    _return("#W3069600", ["8551474201"], "gift_card_7250692"),
]

LOOKUPS_AND_ADDRESSES = [
    ("find_user_id_by_email", {"email": "ETHAN.Lopez8943@example.com"}),
    ("find_user_id_by_email", {"email": "nobody@example.com"}),
    ("find_user_id_by_name_zip", {"first_name": "ethan", "last_name": "LOPEZ", "zip": "43275"}),
    ("find_user_id_by_name_zip", {"first_name": "Ethan", "last_name": "Lopez", "zip": "43276"}),
    ("get_product_details", {"product_id": "3821016478"}),
    ("get_product_details", {"product_id": "0000000000"}),
    ("get_user_details", {"user_id": "nobody_0000"}),
    ("get_order_details", {"order_id": "W9318778"}),
    ("list_all_product_types", {}),
    ("modify_user_address", {"user_id": "nobody_0000", **ADDRESS}),
    ("modify_user_address", {"user_id": "ethan_lopez_6291", **ADDRESS}),
    ("modify_pending_order_address", {"order_id": "#W2611340", **ADDRESS}),  # processed
    ("modify_pending_order_address", {"order_id": "#W0000000", **ADDRESS}),
    ("modify_pending_order_address", {"order_id": "#W6779827", **ADDRESS}),
    ("transfer_to_human_agents", {"summary": "wants to speak to a person"}),
]

EXPRESSIONS = [
    "2 + 2", "(1204.49 - 205.35) * 2", "10 / 4", "7 // 2", "2 ** 10", "1 / 3", "0.125", "0.135",
    "100 - 99.99", "-(-3)", "+3", "((((1))))", "2 ** -2", "  3 * 4", "1 / 0", "1.0 / 0",
    "5 // 0", "2 +", "", "   ", "01 + 1", "1.5.5", "(2)(3)", "()", "...", "(-8) ** 0.5",
    "10.0 ** 400", "1e3", "abs(-1)", "3 % 2", "2 * (3 + 4",
]
CALCULATIONS = [("calculate", {"expression": expression}) for expression in EXPRESSIONS]

SCENARIOS = [
    Case("cancel", CANCEL),
    Case("modify_items", MODIFY_ITEMS),
    Case("modify_payment", MODIFY_PAYMENT),
    Case("exchange_and_return", DELIVERED),
    Case("lookups_and_addresses", LOOKUPS_AND_ADDRESSES),
    Case("calculate", CALCULATIONS),
]


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # evaluating "(2)(3)"
@pytest.mark.parametrize("case", SCENARIOS, ids=lambda case: case.id)
def test_scripted_scenario_matches_tau2(turn: Turn, case: Case, seed_hash: str,
                                        tau2_runs: Mapping[str, Future[Any]]) -> None:
    problems = differences(turn, case, tau2_runs[case.id].result(), seed_hash)
    assert problems == [], "\n".join(problems)


def test_the_scenarios_see_every_write_succeed_and_fail(
        tau2_runs: Mapping[str, Future[reference.ReferenceRun]]) -> None:
    """The scenarios cover success and refusal of every write tool (guards against edits
    that would quietly turn them into all-errors scripts)."""
    outcomes = {(step.name, step.ok) for case in SCENARIOS
                for step in tau2_runs[case.id].result().steps}
    writes = [name for name, effect in EFFECTS.items() if effect is not Effect.SAFE]
    assert {(name, ok) for name in writes for ok in (True, False)} <= outcomes


# --- targeted behaviour -----------------------------------------------------------------------


def test_a_refused_write_says_why_in_tau2s_words_and_changes_nothing(turn: Turn) -> None:
    before = db_hash(turn.conn, DOMAIN)
    refused = turn.call("cancel_pending_order", {"order_id": "#W3113816",
                                                 "reason": "no longer needed"})
    assert refused == Outcome(False, "Non-pending order cannot be cancelled")
    with pytest.raises(ToolFailed):  # the order's state rules it out: no retry helps
        turn.run("cancel_pending_order", {"order_id": "#W3113816",
                                          "reason": "no longer needed"})
    with pytest.raises(ToolRetry, match="^Order not found$"):  # the model can fix the id
        turn.run("get_order_details", {"order_id": "W3113816"})
    assert db_hash(turn.conn, DOMAIN) == before


def test_a_refused_preflight_stages_nothing(turn: Turn) -> None:
    before = db_hash(turn.conn, DOMAIN)
    arguments = {"order_id": "#W2443586", "payment_method_id": "gift_card_2742113"}
    with pytest.raises(ToolRetry, match="^Insufficient gift card balance to pay for the order$"):
        turn.run("modify_pending_order_payment", arguments, preflight=True)
    assert db_hash(turn.conn, DOMAIN) == before


GOOD_SENSITIVE_CALLS = {
    "cancel_pending_order": {"order_id": "#W6779827", "reason": "no longer needed"},
    "modify_pending_order_items": _items("#W9093821", ["3557711149"], ["3928046918"],
                                         "credit_card_7422485")[1],
    "modify_pending_order_payment": {"order_id": "#W6779827",
                                     "payment_method_id": "credit_card_9789590"},
    "exchange_delivered_order_items": _exchange("#W2842410", ["9799386954"], ["1199058591"],
                                                "paypal_4751854")[1],
    "return_delivered_order_items": _return("#W3069600", ["8551474201"], "gift_card_7250692")[1],
}


def test_reads_and_preflights_run_in_a_read_only_transaction(engine: Engine) -> None:
    """The gateway runs reads (and preflights outside a turn) in a READ ONLY transaction, so
    none of them may write or lock rows."""
    reads = {"get_order_details": {"order_id": "#W6779827"},
             "get_user_details": {"user_id": "ethan_lopez_6291"},
             "find_user_id_by_email": {"email": "ethan.lopez8943@example.com"},
             "list_all_product_types": {}}
    with open_turn(engine, ADAPTER) as turn:
        turn.conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        assert turn.conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
        for name, arguments in reads.items():
            turn.run(name, arguments, keep=False)
        for name, arguments in GOOD_SENSITIVE_CALLS.items():
            turn.run(name, arguments, preflight=True, keep=False)


def test_a_sensitive_call_locks_its_order_until_the_turn_ends(engine: Engine) -> None:
    arguments = GOOD_SENSITIVE_CALLS["cancel_pending_order"]
    with (open_turn(engine, ADAPTER) as first,
          open_turn(engine, ADAPTER, lock_timeout_ms=100) as second):
        assert first.call("cancel_pending_order", arguments).ok
        with pytest.raises(OperationalError, match="lock"):
            second.call("modify_pending_order_payment",
                        GOOD_SENSITIVE_CALLS["modify_pending_order_payment"])


def test_huge_powers_are_refused_instead_of_computed(turn: Turn) -> None:
    started = time.monotonic()
    assert turn.call("calculate", {"expression": "9 ** 9 ** 9"}) == Outcome(
        False, "Expression too large to calculate")
    assert turn.call("calculate", {"expression": "2 ** 1000 / 2 ** 999"}) == Outcome(True, "2.0")
    assert time.monotonic() - started < 1


# --- classification and signatures ------------------------------------------------------------


def test_the_registry_sees_the_effect_classes_the_docs_list() -> None:
    assert_classified_as_documented(DOMAIN, EFFECTS)


def test_tools_are_named_and_typed_like_tau2s() -> None:
    assert_typed_like_tau2(ADAPTER)


def _calculated(expression: str) -> Outcome:
    ctx = ToolContext(call_id="c", idempotency_key="k", tenant="t", session_id="s", turn_id="u")
    try:
        return Outcome(True, ADAPTER.tool("calculate").invoke(ctx, {"expression": expression}))
    except ToolError as error:
        return Outcome(False, error.message)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789+-*/(). ", max_size=16))
def test_calculate_answers_like_tau2_for_any_expression(expression: str) -> None:
    from tau2.domains.retail.tools import RetailTools

    ours = _calculated(expression)
    assume(ours.output != "Expression too large to calculate")  # τ² would compute on and on
    try:
        theirs = Outcome(True, RetailTools.calculate(None, expression))  # type: ignore[arg-type]
    except Exception as error:  # τ² reports every exception's text
        theirs = Outcome(False, str(error))
    assert ours == theirs

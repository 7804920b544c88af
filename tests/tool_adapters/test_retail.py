"""The retail adapter against τ²-bench's own retail environment, on a real Postgres.

τ²'s seed data is loaded once into a database of this module; each scenario runs in a
transaction rolled back at the end. Tools are called the way the gateway's ``db`` runner calls
them: ``spec.invoke`` in a savepoint per call, rolled back when the tool raises a ``ToolError``;
a sensitive tool's preflight runs first, as when the gateway stages the call. Every step's
outcome and the final DB hash are compared with τ²'s replay of the same actions.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from gateway.conformance import reference
from gateway.turns.holder import ToolSession
from tests.conftest import named_database
from tool_adapters.retail import ADAPTER
from tool_adapters.retail.tau2data import export_tau2_db, load_tau2_db
from tool_adapters.sdk import Effect, Runner, ToolContext, ToolError, ToolFailed, ToolRetry

pytest.importorskip("tau2")  # the reference side

DOMAIN = "retail"
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
def engine(pg_home: Path) -> Iterator[Engine]:
    """A database holding τ²'s retail seed, loaded and committed once."""
    engine = create_engine(named_database(pg_home, "sg_retail"), poolclass=NullPool)
    with engine.begin() as conn:
        ADAPTER.metadata.drop_all(conn)  # type: ignore[union-attr]
        ADAPTER.metadata.create_all(conn)  # type: ignore[union-attr]
        load_tau2_db(conn, reference.seed_data(DOMAIN))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def shop(engine: Engine) -> Iterator[Connection]:
    """The one connection the scenarios share."""
    with engine.connect() as conn:
        yield conn


@pytest.fixture
def db(shop: Connection) -> Iterator[Connection]:
    """The shop inside a transaction that is rolled back after the test."""
    tx = shop.begin()
    yield shop
    tx.rollback()


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    output: Any  # JSON as τ²'s replay reports it, or the error message


def _as_tau2_reports(value: Any) -> Any:
    """τ² hands tools' text results over as JSON when they parse as JSON (e.g. '4.0')."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def run_tool(conn: Connection, name: str, arguments: dict[str, Any], *,
             preflight: bool = False, keep: bool = True) -> Any:
    """Run the tool (or its preflight) as the gateway's holder does: in a savepoint, rolled
    back when it raises, and also afterwards unless ``keep``."""
    spec = ADAPTER.tool(name)
    savepoint = conn.begin_nested()
    session = ToolSession(conn)
    ctx = ToolContext(call_id=uuid.uuid4().hex, idempotency_key=uuid.uuid4().hex,
                      tenant="t", session_id="s", turn_id="turn", db=session)
    try:
        value = spec.run_preflight(ctx, arguments) if preflight else spec.invoke(ctx, arguments)
        session.flush()
    except BaseException:
        session.close()
        savepoint.rollback()
        raise
    session.close()
    if keep:
        savepoint.commit()
    else:
        savepoint.rollback()
    return value


def call(conn: Connection, name: str, arguments: dict[str, Any]) -> Outcome:
    """One tool call; a sensitive tool is preflighted first, like a staged call."""
    try:
        if ADAPTER.tool(name).preflight is not None:
            run_tool(conn, name, arguments, preflight=True, keep=False)
        value = run_tool(conn, name, arguments)
    except ToolError as error:
        return Outcome(False, error.message)
    return Outcome(True, _as_tau2_reports(value))


def db_hash(conn: Connection) -> str:
    """τ²'s hash of the export taken as it is, without τ²'s model validating it first: equal
    only if the export is exactly what τ² would dump (float types included), and quicker."""
    from tau2.utils import get_dict_hash

    return str(get_dict_hash(export_tau2_db(conn)))


def scripted(task_id: str, actions: Sequence[tuple[str, dict[str, Any]]]) -> Any:
    """A task-like object with these gold actions, for ``reference.replay``."""
    gold = [SimpleNamespace(name=name, arguments=arguments) for name, arguments in actions]
    return SimpleNamespace(id=task_id, evaluation_criteria=SimpleNamespace(actions=gold))


def mismatches(conn: Connection, task: Any) -> list[str]:
    """Run the task's gold actions here and in τ²; describe every difference."""
    expected = reference.replay(DOMAIN, task)
    assert expected.valid, f"task {expected.task_id}: {expected.problem}"
    found: list[str] = []
    for index, step in enumerate(expected.steps):
        got = call(conn, step.name, step.arguments)
        if (got.ok, got.output) != (step.ok, step.output):
            found.append(f"task {expected.task_id} step {index} {step.name}({step.arguments}): "
                         f"τ² {(step.ok, step.output)!r:.300} != "
                         f"ours {(got.ok, got.output)!r:.300}")
    if db_hash(conn) != expected.db_hash:
        found.append(f"task {expected.task_id}: final DB hash differs")
    return found


def in_rolled_back_transaction(conn: Connection, task: Any) -> list[str]:
    tx = conn.begin()
    try:
        return mismatches(conn, task)
    finally:
        tx.rollback()


# --- the data -------------------------------------------------------------------------------


def test_load_then_export_gives_tau2s_seed_hash(db: Connection) -> None:
    seed = reference.seed_data(DOMAIN)
    assert reference.db_hash(DOMAIN, export_tau2_db(db)) == reference.db_hash(DOMAIN, seed)
    assert db_hash(db) == reference.db_hash(DOMAIN, seed)
    assert export_tau2_db(db) == reference.db_model(DOMAIN).model_validate(seed).model_dump()


# --- every task's gold actions ----------------------------------------------------------------


def test_every_task_matches_tau2_step_by_step_and_in_the_final_hash(shop: Connection) -> None:
    tasks = reference.tasks(DOMAIN)
    problems = [problem for task in tasks for problem in in_rolled_back_transaction(shop, task)]
    assert problems == [], "\n".join(problems)
    assert len(tasks) == 114, "τ²'s retail task set changed: update this number"


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

SCENARIOS = {
    "cancel": CANCEL,
    "modify_items": MODIFY_ITEMS,
    "modify_payment": MODIFY_PAYMENT,
    "exchange_and_return": DELIVERED,
    "lookups_and_addresses": LOOKUPS_AND_ADDRESSES,
    "calculate": CALCULATIONS,
}


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # τ²'s eval of "(2)(3)"
@pytest.mark.parametrize("name", SCENARIOS)
def test_scripted_scenario_matches_tau2(db: Connection, name: str) -> None:
    problems = mismatches(db, scripted(name, SCENARIOS[name]))
    assert problems == [], "\n".join(problems)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
def test_the_scenarios_see_every_write_succeed_and_fail() -> None:
    """The scenarios cover success and refusal of every write tool (guards against edits
    that would quietly turn them into all-errors scripts)."""
    outcomes = {(step.name, step.ok) for name, actions in SCENARIOS.items()
                for step in reference.replay(DOMAIN, scripted(name, actions)).steps}
    writes = [name for name, effect in EFFECTS.items() if effect is not Effect.SAFE]
    assert {(name, ok) for name in writes for ok in (True, False)} <= outcomes


# --- targeted behaviour -----------------------------------------------------------------------


def test_a_refused_write_says_why_in_tau2s_words_and_changes_nothing(db: Connection) -> None:
    before = db_hash(db)
    refused = call(db, "cancel_pending_order", {"order_id": "#W3113816",
                                                "reason": "no longer needed"})
    assert refused == Outcome(False, "Non-pending order cannot be cancelled")
    with pytest.raises(ToolFailed):  # the order's state rules it out: no retry helps
        run_tool(db, "cancel_pending_order", {"order_id": "#W3113816",
                                              "reason": "no longer needed"})
    with pytest.raises(ToolRetry, match="^Order not found$"):  # the model can fix the id
        run_tool(db, "get_order_details", {"order_id": "W3113816"})
    assert db_hash(db) == before


def test_a_refused_preflight_stages_nothing(db: Connection) -> None:
    before = db_hash(db)
    arguments = {"order_id": "#W2443586", "payment_method_id": "gift_card_2742113"}
    with pytest.raises(ToolRetry, match="^Insufficient gift card balance to pay for the order$"):
        run_tool(db, "modify_pending_order_payment", arguments, preflight=True)
    assert db_hash(db) == before


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
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        for name, arguments in reads.items():
            run_tool(conn, name, arguments, keep=False)
        for name, arguments in GOOD_SENSITIVE_CALLS.items():
            run_tool(conn, name, arguments, preflight=True, keep=False)


def test_a_sensitive_call_locks_its_order_until_the_turn_ends(engine: Engine) -> None:
    arguments = GOOD_SENSITIVE_CALLS["cancel_pending_order"]
    with engine.connect() as first, engine.connect() as second:  # closing rolls back
        first.begin()
        assert call(first, "cancel_pending_order", arguments).ok
        second.begin()
        second.exec_driver_sql("SET LOCAL lock_timeout = '100ms'")
        with pytest.raises(OperationalError, match="lock"):
            call(second, "modify_pending_order_payment",
                 GOOD_SENSITIVE_CALLS["modify_pending_order_payment"])


def test_huge_powers_are_refused_instead_of_computed(db: Connection) -> None:
    started = time.monotonic()
    assert call(db, "calculate", {"expression": "9 ** 9 ** 9"}) == Outcome(
        False, "Expression too large to calculate")
    assert call(db, "calculate", {"expression": "2 ** 1000 / 2 ** 999"}) == Outcome(True, 2.0)
    assert time.monotonic() - started < 1


# --- classification and signatures ------------------------------------------------------------


def _readme_effects() -> dict[str, str]:
    readme = Path(__file__).parents[2] / "tool_adapters" / "retail" / "README.md"
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", readme.read_text(encoding="utf-8"), re.M)
    return dict(rows)


def test_the_registry_sees_the_effect_classes_the_readme_lists() -> None:
    from gateway.tools.registry import Registry

    registry = Registry([ADAPTER])
    seen = {tool.spec.name: tool.describe()["effect"] for tool in registry}
    assert seen == {name: effect.value for name, effect in EFFECTS.items()} == _readme_effects()
    for tool in registry:
        assert tool.spec.runner is Runner.DB
        assert tool.spec.requires_approval is False
        assert (tool.spec.preflight is not None) == (tool.spec.effect is Effect.SENSITIVE)


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    properties = {name: (field["type"], field.get("items"))
                  for name, field in schema["properties"].items()}
    return {"properties": properties, "required": sorted(schema.get("required", []))}


def test_tools_are_named_and_typed_like_tau2s() -> None:
    from tau2.domains.retail.environment import get_environment

    theirs = {t.name: t.openai_schema["function"]["parameters"]
              for t in get_environment().get_tools()}
    ours = {spec.name: spec.parameters for spec in ADAPTER.tools}
    assert sorted(ours) == sorted(theirs)
    for name, parameters in ours.items():
        assert _shape(parameters) == _shape(theirs[name]), name
        assert ADAPTER.tool(name).description, name


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

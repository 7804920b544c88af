"""The airline adapter against τ²-bench's own airline environment, on a real Postgres.

Every task's gold actions, and a set of hand-written edge cases, run twice: on τ²'s reference
environment (``gateway.conformance.reference``) and through the adapter's tools the way the
gateway's ``db`` runner calls them (a savepoint per call, rolled back on a ``ToolError``;
sensitive tools preflighted first, as when they are staged). Each step's ok flag and output or
error text must be identical, and so must τ²'s hash of the final database. τ²'s seed is loaded
once per module; every scenario runs in a transaction that is rolled back.
"""

from __future__ import annotations

import json
import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from gateway.conformance import reference
from gateway.tools.registry import load_registry
from gateway.turns.holder import ToolSession
from tests.conftest import named_database
from tool_adapters.airline import ADAPTER, schema
from tool_adapters.airline.tau2data import export_tau2_db, load_tau2_db
from tool_adapters.sdk import Effect, ToolContext, ToolError

DOMAIN = "airline"
TASKS = reference.tasks(DOMAIN)

# The README's classification table.
EFFECTS = {
    "get_user_details": Effect.SAFE,
    "get_reservation_details": Effect.SAFE,
    "list_all_airports": Effect.SAFE,
    "search_direct_flight": Effect.SAFE,
    "search_onestop_flight": Effect.SAFE,
    "get_flight_status": Effect.SAFE,
    "calculate": Effect.SAFE,
    "transfer_to_human_agents": Effect.SAFE,
    "book_reservation": Effect.SENSITIVE,
    "cancel_reservation": Effect.SENSITIVE,
    "update_reservation_flights": Effect.SENSITIVE,
    "update_reservation_baggages": Effect.SENSITIVE,
    "update_reservation_passengers": Effect.REVERSIBLE,
    "send_certificate": Effect.SENSITIVE,
}


@pytest.fixture(scope="module")
def tau2_runs() -> Iterator[dict[str, Future[Any]]]:
    """τ²'s replay of every task and edge case, by id, worked out in another process while
    ours run: τ²'s replays and hashes are half of this file's time."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield {task.id: pool.submit(reference.replay, DOMAIN, task)
               for task in [*TASKS, *EDGE_CASES]}
    finally:
        pool.shutdown(cancel_futures=True)  # a failed run does not wait for the rest


@pytest.fixture(scope="module")
def loaded(pg_home: Path, tau2_runs: dict[str, Future[Any]]) -> Iterator[Connection]:
    """One connection to a database holding τ²'s seed, committed once (τ²'s replays are
    started first, so they run while the seed loads)."""
    engine = create_engine(named_database(pg_home, "sg_airline"), poolclass=NullPool)
    with engine.connect() as conn:
        schema.metadata.drop_all(conn)
        schema.metadata.create_all(conn)
        load_tau2_db(conn, reference.seed_data(DOMAIN))
        conn.commit()
        yield conn
    engine.dispose()


@pytest.fixture
def db(loaded: Connection) -> Iterator[Connection]:
    """The seeded database inside a transaction that is rolled back afterwards."""
    transaction = loaded.begin()
    yield loaded
    transaction.rollback()


@pytest.fixture(scope="module")
def seed_hash() -> str:
    return reference.db_hash(DOMAIN, reference.seed_data(DOMAIN))


# -- running calls as the gateway does -----------------------------------------------------


def _context(session: ToolSession) -> ToolContext:
    return ToolContext(call_id=f"call-{uuid.uuid4().hex[:8]}", idempotency_key=uuid.uuid4().hex,
                       tenant="tau2", session_id="session", turn_id="turn", db=session)


def _in_savepoint(conn: Connection, run: Any, *, keep: bool) -> tuple[bool, Any]:
    """``run(ctx)`` in a savepoint: kept on success if ``keep``, rolled back otherwise."""
    savepoint = conn.begin_nested()
    session = ToolSession(conn)
    try:
        value = run(_context(session))
        session.flush()
    except ToolError as error:
        session.close()
        savepoint.rollback()
        return False, error.message
    session.close()
    if keep:
        savepoint.commit()
    else:
        savepoint.rollback()
    return True, value


def call(conn: Connection, name: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
    """One tool call; a sensitive one is preflighted first, as the gateway does on staging."""
    spec = ADAPTER.tool(name)
    if spec.effect is Effect.SENSITIVE:
        ok, refusal = _in_savepoint(conn, lambda ctx: spec.run_preflight(ctx, arguments),
                                    keep=False)
        if not ok:
            return ok, refusal
    return _in_savepoint(conn, lambda ctx: spec.invoke(ctx, arguments), keep=True)


def as_tau2_reports(output: Any) -> str:
    """An output as τ² hands it to the agent (text that is JSON is read as JSON), in a form
    where 128 and 128.0 differ."""
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except ValueError:
            return json.dumps(output)
    return json.dumps(output, sort_keys=True)


@dataclass(frozen=True)
class Comparison:
    ours: list[tuple[bool, Any]]
    theirs: Any  # reference.ReferenceRun
    our_hash: str


def our_hash(conn: Connection, seed_hash: str) -> str:
    """τ²'s hash of our database. Postgres gives a transaction an id at its first write (even
    one rolled back to a savepoint), so without one the tables still hold the committed seed
    and the costly export is skipped."""
    if conn.execute(text("SELECT pg_current_xact_id_if_assigned()")).scalar() is None:
        return seed_hash
    return reference.db_hash(DOMAIN, export_tau2_db(conn))


def compare(conn: Connection, task: Any, seed_hash: str, theirs: Any) -> Comparison:
    """Run the task's actions through our tools, to set beside ``theirs``, τ²'s run."""
    ours = [call(conn, name, arguments) for name, arguments in reference.gold_actions(task)]
    return Comparison(ours, theirs, our_hash(conn, seed_hash))


def assert_same(comparison: Comparison) -> None:
    theirs = comparison.theirs
    for index, (step, (ok, output)) in enumerate(zip(theirs.steps, comparison.ours,
                                                     strict=True)):
        where = f"task {theirs.task_id!r} step {index} {step.name}({step.arguments})"
        assert ok == step.ok, f"{where}: ok={ok} ({output!r}), τ² ok={step.ok} ({step.output!r})"
        if ok:
            assert as_tau2_reports(output) == as_tau2_reports(step.output), f"{where}: output"
        else:
            assert output == step.output, f"{where}: error text"
    assert comparison.our_hash == theirs.db_hash, f"task {theirs.task_id!r}: final DB hash"


def scenario(name: str, *actions: tuple[str, dict[str, Any]]) -> Any:
    """A made-up task with these actions, shaped the way ``reference`` reads a τ² task."""
    steps = [SimpleNamespace(name=tool, arguments=args) for tool, args in actions]
    return SimpleNamespace(id=name, evaluation_criteria=SimpleNamespace(actions=steps))


# -- the data and its classification -------------------------------------------------------


def test_export_of_the_loaded_seed_hashes_like_tau2(db: Connection, seed_hash: str) -> None:
    exported = export_tau2_db(db)
    assert reference.db_hash(DOMAIN, exported) == seed_hash
    seed = reference.seed_data(DOMAIN)
    assert {k: len(v) for k, v in exported.items()} == {k: len(v) for k, v in seed.items()}


def test_the_registry_sees_the_readme_classification() -> None:
    registered = {tool.spec.name: tool for tool in load_registry([DOMAIN])}
    assert {name: tool.spec.effect for name, tool in registered.items()} == EFFECTS
    for name, tool in registered.items():
        assert not tool.spec.requires_approval, name
        assert (tool.spec.preflight is not None) == (tool.spec.effect is Effect.SENSITIVE), name
    readme = (Path(__file__).parents[2] / "tool_adapters/airline/README.md").read_text()
    for name, effect in EFFECTS.items():
        assert f"| `{name}` | `{effect.value}` |" in readme, name


def test_tool_names_and_arguments_are_tau2s() -> None:
    from tau2.domains.airline.environment import get_environment

    tau2_tools = get_environment().tools.get_tools()
    assert {spec.name for spec in ADAPTER.tools} == set(tau2_tools)
    for spec in ADAPTER.tools:
        tau2_parameters = tau2_tools[spec.name].openai_schema["function"]["parameters"]
        ours = spec.parameters
        assert set(ours["properties"]) == set(tau2_parameters["properties"]), spec.name
        assert sorted(ours["required"]) == sorted(tau2_parameters.get("required", [])), spec.name
        for name, theirs in tau2_parameters["properties"].items():
            mine = ours["properties"][name]
            assert (mine.get("type"), mine.get("enum")) == (
                theirs.get("type"), theirs.get("enum")), f"{spec.name}.{name}"
    assert ADAPTER.metadata is schema.metadata
    assert all(name.startswith("airline_") for name in schema.metadata.tables)


# -- every τ² task ------------------------------------------------------------------------


def test_every_task_replays_like_tau2(loaded: Connection, seed_hash: str,
                                      tau2_runs: dict[str, Future[Any]]) -> None:
    """All tasks in one test, each in its own transaction rolled back afterwards."""
    assert len(TASKS) == 50
    for task in TASKS:
        transaction = loaded.begin()
        try:
            assert_same(compare(loaded, task, seed_hash, tau2_runs[task.id].result()))
        finally:
            transaction.rollback()


# -- edge cases, each against τ² as well ---------------------------------------------------

SOPHIA = "sophia_silva_7557"  # gift card $274, certificates $500 and $150, a credit card
MOHAMED_TRIP = "K1NW8N"  # 3 passengers, basic economy, paid with gift_card_6136092 ($129)
ECONOMY_HAT271 = {"flight_number": "HAT271", "date": "2024-05-26"}  # $174, 3 seats left
PERSON = {"first_name": "Sophia", "last_name": "Silva", "dob": "1957-10-05"}


def booking(passengers: int = 1, cabin: str = "economy", flights: Any = None,
            **overrides: Any) -> tuple[str, dict[str, Any]]:
    arguments = {
        "user_id": SOPHIA, "origin": "ORD", "destination": "PHL", "flight_type": "one_way",
        "cabin": cabin, "flights": [ECONOMY_HAT271] if flights is None else flights,
        "passengers": [PERSON] * passengers,
        "payment_methods": [{"payment_id": "credit_card_4196779", "amount": 174 * passengers}],
        "total_baggages": 0, "nonfree_baggages": 0, "insurance": "no",
    }
    return "book_reservation", arguments | overrides


def pay(*parts: tuple[str, int]) -> dict[str, Any]:
    return {"payment_methods": [{"payment_id": pid, "amount": amount} for pid, amount in parts]}


def bags(nonfree: int, payment_id: str, total: int = 3) -> tuple[str, dict[str, Any]]:
    return "update_reservation_baggages", {"reservation_id": MOHAMED_TRIP,
                                           "total_baggages": total,
                                           "nonfree_baggages": nonfree, "payment_id": payment_id}


def rebook(cabin: str, payment_id: str) -> tuple[str, dict[str, Any]]:
    flights = [{"flight_number": "HAT023", "date": "2024-05-26"},
               {"flight_number": "HAT204", "date": "2024-05-28"},
               {"flight_number": "HAT021", "date": "2024-05-28"}]
    return "update_reservation_flights", {"reservation_id": MOHAMED_TRIP, "cabin": cabin,
                                          "flights": flights, "payment_id": payment_id}


def details(reservation_id: str = MOHAMED_TRIP) -> tuple[str, dict[str, Any]]:
    return "get_reservation_details", {"reservation_id": reservation_id}


EDGE_CASES = [
    scenario("booking fees and seats",
             booking(insurance="yes", nonfree_baggages=2, total_baggages=3,
                     **pay(("credit_card_4196779", 304))),
             ("search_direct_flight", {"origin": "ORD", "destination": "PHL",
                                       "date": "2024-05-26"}),
             ("get_user_details", {"user_id": SOPHIA})),
    scenario("booking split over gift card, certificate and card",
             booking(2, **pay(("gift_card_5094406", 274), ("certificate_3887113", 24),
                              ("credit_card_4196779", 50))),
             ("get_user_details", {"user_id": SOPHIA})),
    scenario("booking refusals",
             booking(2, **pay(("credit_card_4196779", 347))),
             booking(2, **pay(("gift_card_5094406", 348))),
             booking(2, **pay(("gift_card_0000000", 348))),
             booking(4),
             booking(flights=[{"flight_number": "HAT001", "date": "2024-05-01"}]),
             booking(flights=[{"flight_number": "HAT999", "date": "2024-05-26"}]),
             booking(flights=[{"flight_number": "HAT271", "date": "2024-06-26"}]),
             booking(user_id="nobody_1")),
    scenario("three new reservation ids, then no more",
             *[booking(cabin="basic_economy", **pay(("credit_card_4196779", 83)))] * 4,
             details("HATHAV"), ("get_user_details", {"user_id": SOPHIA})),
    scenario("baggage charges and refusals",
             bags(1, "certificate_3765853"), bags(3, "gift_card_6136092"),
             bags(1, "gift_card_0000000"), bags(2, "gift_card_6136092"),
             bags(1, "credit_card_5843230"), details(),
             ("get_user_details", {"user_id": "mohamed_silva_9265"})),
    scenario("cabin change charged, then refunded onto a gift card",
             rebook("economy", "credit_card_5843230"), rebook("basic_economy", "gift_card_6136092"),
             rebook("business", "certificate_3765853"), details(),
             ("get_user_details", {"user_id": "mohamed_silva_9265"})),
    scenario("flight change refusals",
             ("update_reservation_flights", {"reservation_id": "NOPE00", "cabin": "economy",
                                             "flights": [], "payment_id": "gift_card_6136092"}),
             rebook("business", "gift_card_6136092"), rebook("economy", "credit_card_0000000"),
             ("update_reservation_flights", {
                 "reservation_id": MOHAMED_TRIP, "cabin": "economy",
                 "flights": [{"flight_number": "HAT001", "date": "2024-05-02"}],
                 "payment_id": "credit_card_5843230"}),
             ("update_reservation_flights", {
                 "reservation_id": MOHAMED_TRIP, "cabin": "economy",
                 "flights": [ECONOMY_HAT271], "payment_id": "credit_card_5843230"})),
    scenario("a booking without flights costs only its extras",
             booking(flights=[], insurance="yes", **pay(("gift_card_5094406", 30))),
             ("get_user_details", {"user_id": SOPHIA})),
    scenario("cancelling twice refunds the refunds",
             ("cancel_reservation", {"reservation_id": MOHAMED_TRIP}),
             ("cancel_reservation", {"reservation_id": MOHAMED_TRIP}),
             ("cancel_reservation", {"reservation_id": "NOPE00"})),
    scenario("passengers",
             ("update_reservation_passengers", {"reservation_id": MOHAMED_TRIP,
                                                "passengers": [PERSON]}),
             ("update_reservation_passengers", {"reservation_id": MOHAMED_TRIP,
                                                "passengers": [PERSON] * 3}),
             details()),
    scenario("certificates run out",
             *[("send_certificate", {"user_id": "mia_li_3668", "amount": 150})] * 4,
             ("send_certificate", {"user_id": "nobody_1", "amount": 50})),
    scenario("reads",
             ("get_flight_status", {"flight_number": "HAT001", "date": "2024-05-01"}),
             ("get_flight_status", {"flight_number": "HAT001", "date": "2024-07-01"}),
             ("get_flight_status", {"flight_number": "HAT999", "date": "2024-05-01"}),
             ("search_onestop_flight", {"origin": "JFK", "destination": "SFO",
                                        "date": "2024-05-26"}),
             ("search_onestop_flight", {"origin": "SEA", "destination": "BOS",
                                        "date": "2024-05-20"}),
             ("search_onestop_flight", {"origin": "SEA", "destination": "BOS",
                                        "date": "2024-05-05"}),
             ("search_direct_flight", {"origin": "JFK", "destination": "XXX",
                                       "date": "2024-05-26"}),
             ("list_all_airports", {}),
             ("get_user_details", {"user_id": "nobody_1"}),
             ("calculate", {"expression": "(174 + 30) * 2 / 3"}),
             ("calculate", {"expression": "1 / 0"}),
             ("calculate", {"expression": "2 x 3"}),
             ("calculate", {"expression": "(2"}),
             ("transfer_to_human_agents", {"summary": "wants a person"})),
]


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda case: case.id)
def test_edge_case_like_tau2(db: Connection, case: Any, seed_hash: str,
                            tau2_runs: dict[str, Future[Any]]) -> None:
    assert_same(compare(db, case, seed_hash, tau2_runs[case.id].result()))


def test_a_refused_write_leaves_the_database_as_it_was(db: Connection, seed_hash: str) -> None:
    ok, message = call(db, *booking(flights=[{"flight_number": "HAT001",
                                              "date": "2024-05-01"}]))
    assert (ok, message) == (False, "Flight HAT001 not available on date 2024-05-01")
    ok, message = call(db, *bags(3, "gift_card_6136092"))
    assert (ok, message) == (False, "Gift card balance is not enough")
    assert reference.db_hash(DOMAIN, export_tau2_db(db)) == seed_hash


def test_a_preflight_checks_without_writing(db: Connection, seed_hash: str) -> None:
    spec = ADAPTER.tool("book_reservation")
    good, bad = booking()[1], booking(**pay(("credit_card_4196779", 1)))[1]
    assert _in_savepoint(db, lambda ctx: spec.run_preflight(ctx, good), keep=True) == (True, None)
    assert _in_savepoint(db, lambda ctx: spec.run_preflight(ctx, bad), keep=True) == (
        False, "Payment amount does not add up, total price is 174, but paid 1")
    assert reference.db_hash(DOMAIN, export_tau2_db(db)) == seed_hash


def test_using_one_certificate_twice_fails_with_tau2s_text(db: Connection,
                                                          seed_hash: str) -> None:
    """τ² fails on the second use of a certificate it has just deleted, after changing some
    of the data; here the failed call leaves nothing, so only the text is compared."""
    twice = booking(2, **pay(("certificate_8045380", 200), ("certificate_8045380", 148)))
    theirs = reference.replay(DOMAIN, scenario("certificate twice", twice)).steps[0]
    assert (theirs.ok, theirs.output) == (False, "'certificate_8045380'")
    assert call(db, *twice) == (False, "'certificate_8045380'")
    assert reference.db_hash(DOMAIN, export_tau2_db(db)) == seed_hash

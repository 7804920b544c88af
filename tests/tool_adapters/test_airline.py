"""The airline adapter against τ²-bench's own airline environment, on a real Postgres.

Every task's gold actions, and a set of hand-written edge cases, run twice: on τ²'s reference
environment (``lab.conformance.reference``, in another process meanwhile) and through the
adapter's tools the way the gateway's ``db`` runner calls them (``tau2_support``). Each step's ok
flag and output or error text must be identical, and so must τ²'s hash of the final database.
τ²'s seed is loaded once per module; every scenario runs in a turn that is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from lab.conformance import reference
from tests.tool_adapters.tau2_support import (
    Action,
    Case,
    Outcome,
    Turn,
    assert_classified_as_documented,
    assert_typed_like_tau2,
    differences,
    differences_each_in_a_turn,
    open_turn,
    replayed_by_tau2,
    seeded_engine,
    task_cases,
)
from tool_adapters.airline import ADAPTER, schema
from tool_adapters.airline.tau2data import export_tau2_db
from tool_adapters.sdk import Effect, ToolRetry

pytest.importorskip("tau2")  # the reference side

DOMAIN = "airline"
TASKS = task_cases(DOMAIN)

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
def tau2_runs() -> Iterator[Mapping[str, Future[reference.ReferenceRun]]]:
    """τ²'s replay of every task and edge case, by id, started before anything else."""
    with replayed_by_tau2(DOMAIN, [*EDGE_CASES, *TASKS]) as runs:
        yield runs


@pytest.fixture(scope="module")
def engine(pg_home: Path, tau2_runs: Mapping[str, Future[Any]]) -> Iterator[Engine]:
    """A database holding τ²'s seed, committed once (τ²'s replays are started first, so they
    run while the seed loads)."""
    with seeded_engine(pg_home, DOMAIN) as engine:
        yield engine


@pytest.fixture
def turn(engine: Engine) -> Iterator[Turn]:
    """A turn on the seeded database, rolled back afterwards."""
    with open_turn(engine, ADAPTER) as turn:
        yield turn


@pytest.fixture(scope="module")
def seed_hash() -> str:
    return reference.db_hash(DOMAIN, reference.seed_data(DOMAIN))


# -- the data and its classification -------------------------------------------------------


def test_export_of_the_loaded_seed_hashes_like_tau2(turn: Turn, seed_hash: str) -> None:
    exported = export_tau2_db(turn.conn)
    assert reference.db_hash(DOMAIN, exported) == seed_hash
    seed = reference.seed_data(DOMAIN)
    assert {k: len(v) for k, v in exported.items()} == {k: len(v) for k, v in seed.items()}


def test_the_registry_sees_the_documented_classification() -> None:
    assert_classified_as_documented(DOMAIN, EFFECTS)


def test_tool_names_and_arguments_are_tau2s() -> None:
    assert_typed_like_tau2(ADAPTER)
    assert ADAPTER.metadata is schema.metadata
    assert all(name.startswith("airline_") for name in schema.metadata.tables)


# -- every τ² task ------------------------------------------------------------------------


def test_every_task_replays_like_tau2(engine: Engine, seed_hash: str,
                                      tau2_runs: Mapping[str, Future[Any]]) -> None:
    """All tasks in one test, each in its own turn rolled back afterwards."""
    assert len(TASKS) == 50
    problems = differences_each_in_a_turn(engine, ADAPTER, TASKS, tau2_runs, seed_hash)
    assert problems == [], "\n".join(problems)


# -- edge cases, each against τ² as well ---------------------------------------------------

SOPHIA = "sophia_silva_7557"  # gift card $274, certificates $500 and $150, a credit card
MOHAMED_TRIP = "K1NW8N"  # 3 passengers, basic economy, paid with gift_card_6136092 ($129)
ECONOMY_HAT271 = {"flight_number": "HAT271", "date": "2024-05-26"}  # $174, 3 seats left
PERSON = {"first_name": "Sophia", "last_name": "Silva", "dob": "1957-10-05"}


def scenario(name: str, *actions: Action) -> Case:
    return Case(name, list(actions))


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
def test_edge_case_like_tau2(turn: Turn, case: Case, seed_hash: str,
                            tau2_runs: Mapping[str, Future[Any]]) -> None:
    problems = differences(turn, case, tau2_runs[case.id].result(), seed_hash)
    assert problems == [], "\n".join(problems)


def test_a_refused_write_leaves_the_database_as_it_was(turn: Turn, seed_hash: str) -> None:
    refused = turn.call(*booking(flights=[{"flight_number": "HAT001", "date": "2024-05-01"}]))
    assert refused == Outcome(False, "Flight HAT001 not available on date 2024-05-01")
    assert turn.call(*bags(3, "gift_card_6136092")) == Outcome(
        False, "Gift card balance is not enough")
    assert reference.db_hash(DOMAIN, export_tau2_db(turn.conn)) == seed_hash


def test_a_preflight_checks_without_writing(turn: Turn, seed_hash: str) -> None:
    good, bad = booking()[1], booking(**pay(("credit_card_4196779", 1)))[1]
    assert turn.run("book_reservation", good, preflight=True, keep=True) is None
    with pytest.raises(ToolRetry) as refused:
        turn.run("book_reservation", bad, preflight=True, keep=True)
    assert refused.value.message == (
        "Payment amount does not add up, total price is 174, but paid 1")
    assert reference.db_hash(DOMAIN, export_tau2_db(turn.conn)) == seed_hash


def test_using_one_certificate_twice_fails_with_tau2s_text(turn: Turn, seed_hash: str) -> None:
    """τ² fails on the second use of a certificate it has just deleted, after changing some
    of the data; here the failed call leaves nothing, so only the text is compared."""
    twice = booking(2, **pay(("certificate_8045380", 200), ("certificate_8045380", 148)))
    theirs = reference.replay_actions(DOMAIN, [twice]).steps[0]
    assert (theirs.ok, theirs.output) == (False, "'certificate_8045380'")
    assert turn.call(*twice) == Outcome(False, "'certificate_8045380'")
    assert reference.db_hash(DOMAIN, export_tau2_db(turn.conn)) == seed_hash

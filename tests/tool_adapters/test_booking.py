"""The booking adapter against the real booking service on localhost: no mocks, real HTTP.

Tools are called the way the tool worker calls them, through ``spec.invoke`` and
``spec.run_compensate``, so argument validation and JSON conversion are exercised too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.support.booking_service import LocalBookingService
from tool_adapters.booking import ADAPTER, BookingUnavailable
from tool_adapters.sdk import Effect, Runner, ToolContext, ToolError, ToolFailed, ToolRetry

DAY = "2030-05-06"
ALL_SLOTS = [f"{DAY}T{hour:02d}:00" for hour in range(9, 17)]

find_slots = ADAPTER.tool("find_slots")
book_slot = ADAPTER.tool("book_slot")
confirm_booking = ADAPTER.tool("confirm_booking")
get_booking = ADAPTER.tool("get_booking")


@pytest.fixture(scope="module")
def running_service() -> Iterator[LocalBookingService]:
    with LocalBookingService() as service:
        yield service


@pytest.fixture
def service(running_service: LocalBookingService) -> LocalBookingService:
    running_service.reset()
    return running_service


def make_ctx(service: LocalBookingService, key: str | None = None) -> ToolContext:
    return ToolContext(
        call_id=f"call-{uuid.uuid4().hex[:8]}",
        idempotency_key=key or f"key-{uuid.uuid4().hex}",
        tenant="acme",
        session_id="session-1",
        turn_id="turn-1",
        settings={"base_url": service.url, "timeout_s": 2.0},
    )


def book_args(start: str = ALL_SLOTS[0], name: str = "Ada") -> dict[str, Any]:
    return {"resource": "room-a", "start": start, "name": name}


def bookings(service: LocalBookingService, name: str | None = None) -> list[dict[str, Any]]:
    params = {"name": name} if name is not None else {}
    response = httpx.get(f"{service.url}/bookings", params=params, timeout=5.0)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


def logged(service: LocalBookingService, method: str) -> list[dict[str, Any]]:
    return [entry for entry in service.requests() if entry["method"] == method]


def test_adapter_declares_effects_and_runners() -> None:
    effects = {spec.name: spec.effect for spec in ADAPTER.tools}
    assert effects == {
        "find_slots": Effect.SAFE,
        "get_booking": Effect.SAFE,
        "book_slot": Effect.REVERSIBLE,
        "confirm_booking": Effect.SENSITIVE,
    }
    assert {spec.runner for spec in ADAPTER.tools} == {Runner.TASK}
    assert book_slot.compensate is not None
    assert ADAPTER.qualified_names[0] == "booking.find_slots"
    parameters = book_slot.public_schema()["parameters"]
    assert parameters["required"] == ["resource", "start", "name"]
    assert "find_slots" in parameters["properties"]["start"]["description"]


def test_find_slots_lists_the_whole_day_when_nothing_is_booked(
    service: LocalBookingService,
) -> None:
    assert find_slots.invoke(make_ctx(service), {"resource": "room-a", "day": DAY}) == ALL_SLOTS


def test_find_slots_rejects_a_bad_day_for_the_model_to_fix(service: LocalBookingService) -> None:
    with pytest.raises(ToolRetry, match="not a date"):
        find_slots.invoke(make_ctx(service), {"resource": "room-a", "day": "next tuesday"})


def test_book_slot_creates_the_booking_and_takes_the_slot(service: LocalBookingService) -> None:
    booking = book_slot.invoke(make_ctx(service), book_args(ALL_SLOTS[2]))

    assert booking["status"] == "active"
    assert (booking["resource"], booking["start"], booking["name"]) == (
        "room-a", ALL_SLOTS[2], "Ada"
    )
    assert get_booking.invoke(make_ctx(service), {"booking_id": booking["id"]}) == booking
    free = find_slots.invoke(make_ctx(service), {"resource": "room-a", "day": DAY})
    assert free == [slot for slot in ALL_SLOTS if slot != ALL_SLOTS[2]]
    # Another resource's calendar is untouched.
    assert find_slots.invoke(make_ctx(service), {"resource": "room-b", "day": DAY}) == ALL_SLOTS


def test_a_retried_call_with_the_same_key_books_once(service: LocalBookingService) -> None:
    ctx = make_ctx(service)
    first = book_slot.invoke(ctx, book_args())
    again = book_slot.invoke(ctx, book_args())

    assert again == first
    posts = logged(service, "POST")
    assert [(p["path"], p["idempotency_key"]) for p in posts] == [
        ("/bookings", ctx.idempotency_key),
        ("/bookings", ctx.idempotency_key),
    ]
    assert [p["status"] for p in posts] == [201, 200]
    assert [b["id"] for b in bookings(service, name="Ada")] == [first["id"]]


def test_a_retry_after_a_server_error_still_books_once(service: LocalBookingService) -> None:
    ctx = make_ctx(service)
    service.fail("POST", times=1, status=502)
    with pytest.raises(BookingUnavailable) as raised:
        book_slot.invoke(ctx, book_args())
    assert not isinstance(raised.value, ToolError)  # the worker retries; the model is not told
    assert bookings(service) == []

    booking = book_slot.invoke(ctx, book_args())
    assert booking["status"] == "active"
    assert len(bookings(service)) == 1


def test_a_taken_slot_is_a_terminal_failure(service: LocalBookingService) -> None:
    book_slot.invoke(make_ctx(service), book_args(name="Ada"))
    with pytest.raises(ToolFailed, match="slot taken"):
        book_slot.invoke(make_ctx(service), book_args(name="Grace"))
    assert [b["name"] for b in bookings(service)] == ["Ada"]


def test_a_start_off_the_hour_asks_the_model_to_fix_it(service: LocalBookingService) -> None:
    with pytest.raises(ToolRetry, match="on the hour"):
        book_slot.invoke(make_ctx(service), book_args(start=f"{DAY}T09:30"))
    with pytest.raises(ToolRetry, match="opening hours"):
        book_slot.invoke(make_ctx(service), book_args(start=f"{DAY}T18:00"))
    assert bookings(service) == []


def test_arguments_are_validated_before_any_request(service: LocalBookingService) -> None:
    with pytest.raises(ValidationError):
        book_slot.invoke(make_ctx(service), book_args(name=""))
    assert service.requests() == []


def test_compensation_cancels_the_booking_and_frees_the_slot(
    service: LocalBookingService,
) -> None:
    ctx = make_ctx(service)
    booking = book_slot.invoke(ctx, book_args())

    undone = book_slot.run_compensate(ctx, book_args(), booking)

    assert undone["id"] == booking["id"]
    assert undone["status"] == "cancelled"
    stored = get_booking.invoke(make_ctx(service), {"booking_id": booking["id"]})
    assert stored["status"] == "cancelled"
    assert ALL_SLOTS[0] in find_slots.invoke(make_ctx(service), {"resource": "room-a", "day": DAY})


def test_compensation_is_idempotent(service: LocalBookingService) -> None:
    ctx = make_ctx(service)
    booking = book_slot.invoke(ctx, book_args())

    first = book_slot.run_compensate(ctx, book_args(), booking)
    second = book_slot.run_compensate(ctx, book_args(), booking)

    assert first["status"] == second["status"] == "cancelled"
    assert [d["path"] for d in logged(service, "DELETE")] == [f"/bookings/{booking['id']}"] * 2
    assert [b["status"] for b in bookings(service)] == ["cancelled"]


def test_compensating_an_unknown_booking_counts_as_done(service: LocalBookingService) -> None:
    undone = book_slot.run_compensate(make_ctx(service), book_args(), {"id": "bk_gone"})
    assert undone == {"id": "bk_gone", "status": "not_found"}
    assert [d["status"] for d in logged(service, "DELETE")] == [404]


def test_compensation_raises_while_the_service_fails_then_succeeds(
    service: LocalBookingService,
) -> None:
    ctx = make_ctx(service)
    booking = book_slot.invoke(ctx, book_args())
    service.fail("DELETE", times=2)

    for _ in range(2):
        with pytest.raises(BookingUnavailable, match="503") as raised:
            book_slot.run_compensate(ctx, book_args(), booking)
        assert not isinstance(raised.value, ToolError)
        stored = get_booking.invoke(make_ctx(service), {"booking_id": booking["id"]})
        assert stored["status"] == "active"

    undone = book_slot.run_compensate(ctx, book_args(), booking)
    assert undone["status"] == "cancelled"
    assert [d["status"] for d in logged(service, "DELETE")] == [503, 503, 200]


def test_confirm_after_book(service: LocalBookingService) -> None:
    booking = book_slot.invoke(make_ctx(service), book_args())
    ctx = make_ctx(service)

    confirmed = confirm_booking.invoke(ctx, {"booking_id": booking["id"]})
    replayed = confirm_booking.invoke(ctx, {"booking_id": booking["id"]})

    assert confirmed["status"] == "confirmed"
    assert replayed == confirmed
    stored = get_booking.invoke(make_ctx(service), {"booking_id": booking["id"]})
    assert stored["status"] == "confirmed"
    confirm_posts = [p for p in logged(service, "POST") if p["path"].endswith("/confirm")]
    assert [p["idempotency_key"] for p in confirm_posts] == [ctx.idempotency_key] * 2


def test_confirming_a_cancelled_booking_fails(service: LocalBookingService) -> None:
    ctx = make_ctx(service)
    booking = book_slot.invoke(ctx, book_args())
    book_slot.run_compensate(ctx, book_args(), booking)

    with pytest.raises(ToolFailed, match="cancelled"):
        confirm_booking.invoke(make_ctx(service), {"booking_id": booking["id"]})
    stored = get_booking.invoke(make_ctx(service), {"booking_id": booking["id"]})
    assert stored["status"] == "cancelled"


def test_unknown_booking_ids_ask_the_model_to_fix_them(service: LocalBookingService) -> None:
    with pytest.raises(ToolRetry, match="no booking 'bk_nope'"):
        get_booking.invoke(make_ctx(service), {"booking_id": "bk_nope"})
    with pytest.raises(ToolRetry, match="no booking"):
        confirm_booking.invoke(make_ctx(service), {"booking_id": "bk_nope"})
    # An id cannot reach another path of the service.
    with pytest.raises(ToolRetry, match="no booking"):
        get_booking.invoke(make_ctx(service), {"booking_id": "../slots"})


def test_a_service_that_is_down_raises_a_retryable_error() -> None:
    service = LocalBookingService().start()
    booking = book_slot.invoke(make_ctx(service), book_args())
    service.stop()
    try:
        for call in (
            lambda: find_slots.invoke(make_ctx(service), {"resource": "room-a", "day": DAY}),
            lambda: book_slot.invoke(make_ctx(service), book_args(start=ALL_SLOTS[1])),
            lambda: book_slot.run_compensate(make_ctx(service), book_args(), booking),
        ):
            with pytest.raises(BookingUnavailable, match="unreachable") as raised:
                call()
            assert isinstance(raised.value, RuntimeError)
            assert not isinstance(raised.value, ToolError)
            assert isinstance(raised.value.__cause__, httpx.TransportError)

        # Back up on the same port, with its data: the retried compensation goes through.
        service.start()
        undone = book_slot.run_compensate(make_ctx(service), book_args(), booking)
        assert undone["status"] == "cancelled"
    finally:
        service.stop()


class TestServiceContract:
    """The service's own rules, which the adapter relies on."""

    def test_creating_needs_an_idempotency_key(self, service: LocalBookingService) -> None:
        response = httpx.post(f"{service.url}/bookings", json=book_args())
        assert response.status_code == 400
        assert bookings(service) == []

    def test_a_key_reused_for_another_body_is_refused(self, service: LocalBookingService) -> None:
        headers = {"Idempotency-Key": "k1"}
        first = httpx.post(f"{service.url}/bookings", json=book_args(), headers=headers)
        other = httpx.post(
            f"{service.url}/bookings", json=book_args(start=ALL_SLOTS[1]), headers=headers
        )
        assert (first.status_code, other.status_code) == (201, 409)
        assert len(bookings(service)) == 1

    def test_delete_is_idempotent_and_404s_unknown_ids(self, service: LocalBookingService) -> None:
        booking = book_slot.invoke(make_ctx(service), book_args())
        url = f"{service.url}/bookings/{booking['id']}"
        assert [httpx.delete(url).status_code for _ in range(2)] == [200, 200]
        assert httpx.delete(f"{service.url}/bookings/bk_missing").status_code == 404

    def test_reset_clears_bookings_faults_and_log(self, service: LocalBookingService) -> None:
        book_slot.invoke(make_ctx(service), book_args())
        service.fail("GET", times=5)
        service.reset()
        assert service.requests() == []
        assert bookings(service) == []  # would be a 503 if the fault had survived

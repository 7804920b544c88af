"""A small booking REST service: the third-party calendar the ``booking`` adapter talks to.

It stands in for an external system, so it keeps to the habits of one: state lives only in this
process (in memory, behind a lock), writes are made safe to retry with an ``Idempotency-Key``
header, and ``/_control`` has switches that make it misbehave on purpose (answer 503 a few times)
so tests can check how the adapter copes with a flaky edge. Nothing here imports the gateway.

Times are wall-clock times of the resource's own calendar, without a timezone offset: a day has
eight hourly slots starting 09:00 to 16:00, written ``YYYY-MM-DDTHH:00``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

FIRST_HOUR = 9
LAST_HOUR = 16  # the last slot starts at 16:00 and ends at 17:00
CONTROL_PREFIX = "/_control"


def slot_label(start: datetime) -> str:
    """The canonical spelling of a slot's start, used in responses and compared on writes."""
    return start.strftime("%Y-%m-%dT%H:%M")


def day_slots(day: date) -> list[str]:
    """Every slot of ``day``, booked or not."""
    hours = range(FIRST_HOUR, LAST_HOUR + 1)
    return [slot_label(datetime.combine(day, time(hour))) for hour in hours]


def parse_start(text: str) -> str:
    """Check that ``text`` names one of the day's slots and return its canonical spelling.

    Raises ``ValueError`` with a message meant for whoever sent the request.
    """
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"start {text!r} is not an ISO datetime like 2030-01-31T09:00") from None
    if start.tzinfo is not None:
        raise ValueError("start must be the calendar's local time, without a timezone offset")
    if (start.minute, start.second, start.microsecond) != (0, 0, 0):
        raise ValueError(f"start {text!r} is not on the hour; slots start at HH:00")
    if not FIRST_HOUR <= start.hour <= LAST_HOUR:
        raise ValueError(
            f"start {text!r} is outside opening hours; slots start from "
            f"{FIRST_HOUR:02d}:00 to {LAST_HOUR:02d}:00"
        )
    return slot_label(start)


class BookingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource: str = Field(min_length=1, max_length=100)
    start: str
    name: str = Field(min_length=1, max_length=200)


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1)
    times: int = Field(default=1, ge=0)
    status: int = Field(default=503, ge=400, le=599)


@dataclass
class _Fault:
    remaining: int
    status: int


@dataclass
class _State:
    """Everything the service knows; every read and write holds ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    bookings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Idempotency-Key of a create → (the request it came with, the booking it made).
    created: dict[str, tuple[tuple[str, str, str], str]] = field(default_factory=dict)
    # Idempotency-Key of a confirm → the booking it confirmed.
    confirmed: dict[str, str] = field(default_factory=dict)
    faults: dict[str, _Fault] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        with self.lock:
            self.bookings.clear()
            self.created.clear()
            self.confirmed.clear()
            self.faults.clear()
            self.log.clear()

    def take_fault(self, method: str) -> int | None:
        """The status to answer instead of serving the request, using up one armed fault."""
        with self.lock:
            fault = self.faults.get(method)
            if fault is None or fault.remaining <= 0:
                return None
            fault.remaining -= 1
            if fault.remaining == 0:
                del self.faults[method]
            return fault.status

    def holder(self, resource: str, start: str) -> dict[str, Any] | None:
        """The live booking on a slot, if any (caller holds the lock)."""
        for booking in self.bookings.values():
            if (
                booking["resource"] == resource
                and booking["start"] == start
                and booking["status"] != "cancelled"
            ):
                return booking
        return None


def _require_key(key: str | None) -> str:
    if not key:
        raise HTTPException(400, "the Idempotency-Key header is required")
    return key


def _find(state: _State, booking_id: str) -> dict[str, Any]:
    booking = state.bookings.get(booking_id)
    if booking is None:
        raise HTTPException(404, f"no booking {booking_id!r}")
    return booking


def _state(request: Request) -> _State:
    """The state of the service that received ``request`` (each app holds its own)."""
    state: _State = request.app.state.booking
    return state


State = Annotated[_State, Depends(_state)]
router = APIRouter()


async def _faults_and_log(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    # Control calls are the test's own, so they are neither logged nor subject to faults.
    if request.url.path.startswith(CONTROL_PREFIX):
        return await call_next(request)
    state = _state(request)
    status = state.take_fault(request.method)
    if status is not None:
        response: Response = JSONResponse({"detail": "injected fault"}, status_code=status)
    else:
        response = await call_next(request)
    with state.lock:
        state.log.append({
            "method": request.method,
            "path": request.url.path,
            "idempotency_key": request.headers.get("idempotency-key"),
            "status": response.status_code,
        })
    return response


@router.get("/slots")
def free_slots(
    state: State, resource: str = Query(min_length=1), day: str = Query()
) -> list[str]:
    try:
        wanted = date.fromisoformat(day)
    except ValueError:
        raise HTTPException(422, f"day {day!r} is not a date like 2030-01-31") from None
    with state.lock:
        return [s for s in day_slots(wanted) if state.holder(resource, s) is None]


@router.post("/bookings", status_code=201)
def create_booking(
    state: State,
    body: BookingRequest,
    response: Response,
    idempotency_key: str | None = Header(default=None),
) -> dict[str, Any]:
    key = _require_key(idempotency_key)
    try:
        start = parse_start(body.start)
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    request = (body.resource, start, body.name)
    with state.lock:
        seen = state.created.get(key)
        if seen is not None:
            if seen[0] != request:
                raise HTTPException(409, "Idempotency-Key was already used for another booking")
            response.status_code = 200
            return dict(state.bookings[seen[1]])
        if state.holder(body.resource, start) is not None:
            raise HTTPException(409, "slot taken")
        booking = {
            "id": f"bk_{uuid.uuid4().hex[:12]}",
            "resource": body.resource,
            "start": start,
            "name": body.name,
            "status": "active",
            "created_at": datetime.now(UTC).isoformat(),
        }
        state.bookings[booking["id"]] = booking
        state.created[key] = (request, booking["id"])
        return dict(booking)


@router.get("/bookings")
def list_bookings(state: State, name: str | None = None) -> list[dict[str, Any]]:
    with state.lock:
        return [dict(b) for b in state.bookings.values() if name is None or b["name"] == name]


@router.get("/bookings/{booking_id}")
def get_booking(state: State, booking_id: str) -> dict[str, Any]:
    with state.lock:
        return dict(_find(state, booking_id))


@router.delete("/bookings/{booking_id}")
def cancel_booking(state: State, booking_id: str) -> dict[str, Any]:
    with state.lock:
        booking = _find(state, booking_id)
        booking["status"] = "cancelled"
        return dict(booking)


@router.post("/bookings/{booking_id}/confirm")
def confirm_booking(
    state: State, booking_id: str, idempotency_key: str | None = Header(default=None)
) -> dict[str, Any]:
    key = _require_key(idempotency_key)
    with state.lock:
        earlier = state.confirmed.get(key)
        if earlier is not None and earlier != booking_id:
            raise HTTPException(409, "Idempotency-Key was already used for another booking")
        booking = _find(state, booking_id)
        if earlier is None:
            if booking["status"] == "cancelled":
                raise HTTPException(409, f"booking {booking_id!r} is cancelled")
            booking["status"] = "confirmed"
            state.confirmed[key] = booking_id
        return dict(booking)


@router.post(f"{CONTROL_PREFIX}/fail")
def arm_fault(state: State, fault: FaultRequest) -> dict[str, Any]:
    method = fault.method.upper()
    with state.lock:
        if fault.times == 0:
            state.faults.pop(method, None)
        else:
            state.faults[method] = _Fault(fault.times, fault.status)
    return {"method": method, "times": fault.times, "status": fault.status}


@router.post(f"{CONTROL_PREFIX}/reset")
def reset(state: State) -> dict[str, str]:
    state.reset()
    return {"status": "reset"}


@router.get(f"{CONTROL_PREFIX}/requests")
def requests_log(state: State) -> list[dict[str, Any]]:
    with state.lock:
        return [dict(entry) for entry in state.log]


def create_service() -> FastAPI:
    """A fresh service with empty state; each call is a separate "external system"."""
    app = FastAPI(title="Booking service (specgate test double)")
    app.state.booking = _State()
    app.middleware("http")(_faults_and_log)
    app.include_router(router)
    return app

"""Flights on a date: the lookup bookings and changes check, and the two searches.

Searches walk the catalogue in τ²'s order (``position``) and list only dates whose status is
"available", each with its seats and prices per cabin, shaped like τ²'s ``DirectFlight``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from tool_adapters.airline import schema
from tool_adapters.airline.records import Db, Record
from tool_adapters.sdk import ToolFailed, ToolRetry


@dataclass(frozen=True, slots=True)
class FlightDay:
    """One flight on one date that can be booked, with its seats and prices per cabin."""

    flight_number: str
    origin: str
    destination: str
    date: str
    seats: dict[str, int]
    prices: dict[str, int]


def _scheduled(db: Db, flight_number: str, date: str) -> Any:
    """The flight's route and its status on ``date``; τ²'s errors for an unknown flight or date."""
    flights, dates = schema.flights, schema.flight_dates
    row = db.execute(
        select(flights.c.origin, flights.c.destination, dates.c.status)
        .select_from(flights.outerjoin(dates, and_(dates.c.flight_number == flights.c.flight_number,
                                                   dates.c.date == date)))
        .where(flights.c.flight_number == flight_number)
    ).first()
    if row is None:
        raise ToolRetry(f"Flight {flight_number} not found")
    if row.status is None:
        raise ToolRetry(f"Flight {flight_number} not found on date {date}")
    return row


def status(db: Db, flight_number: str, date: str) -> str:
    """The status of the flight on ``date``: available, on time, delayed, flying, landed..."""
    return str(_scheduled(db, flight_number, date).status)


def bookable(db: Db, flight_number: str, date: str) -> FlightDay:
    """The flight on ``date`` if it is open for booking; τ²'s errors in τ²'s order if not."""
    row = _scheduled(db, flight_number, date)
    if row.status != "available":
        raise ToolFailed(f"Flight {flight_number} not available on date {date}")
    cabins = schema.flight_cabins
    rows = db.execute(select(cabins).where(cabins.c.flight_number == flight_number,
                                           cabins.c.date == date)).all()
    return FlightDay(flight_number, row.origin, row.destination, date,
                     seats={r.cabin: r.available_seats for r in rows},
                     prices={r.cabin: r.price for r in rows})


def _available(db: Db, days: Collection[str], *, origin: str | None = None,
               destination: str | None = None) -> list[tuple[str, Record]]:
    """Bookable flights on any of ``days`` as ``(date, DirectFlight)``, in catalogue order."""
    flights, dates, cabins = schema.flights, schema.flight_dates, schema.flight_cabins
    query = (
        select(flights, dates.c.date, cabins.c.cabin, cabins.c.available_seats, cabins.c.price)
        .join(dates, dates.c.flight_number == flights.c.flight_number)
        .join(cabins, and_(cabins.c.flight_number == dates.c.flight_number,
                           cabins.c.date == dates.c.date))
        .where(dates.c.date.in_(list(days)), dates.c.status == "available")
        .order_by(flights.c.position, dates.c.date)
    )
    if origin is not None:
        query = query.where(flights.c.origin == origin)
    if destination is not None:
        query = query.where(flights.c.destination == destination)
    found: dict[tuple[str, str], Record] = {}
    for row in db.execute(query):
        record = found.get((row.flight_number, row.date))
        if record is None:
            record = found[row.flight_number, row.date] = _direct_flight(row)
        record["available_seats"][row.cabin] = row.available_seats
        record["prices"][row.cabin] = row.price
    return [(day, record) for (_, day), record in found.items()]


def _direct_flight(row: Any) -> Record:
    return {
        "flight_number": row.flight_number, "origin": row.origin,
        "destination": row.destination, "status": "available",
        "scheduled_departure_time_est": row.scheduled_departure_time_est,
        "scheduled_arrival_time_est": row.scheduled_arrival_time_est,
        "date": None, "available_seats": {}, "prices": {},
    }


def search_direct(db: Db, origin: str, destination: str, date: str) -> list[Record]:
    """Direct flights from ``origin`` to ``destination`` open for booking on ``date``."""
    return [record for _, record in _available(db, [date], origin=origin,
                                               destination=destination)]


def _arrival_day(date: str, arrival_time: str) -> str:
    """The date a leg lands, written the way τ² computes it.

    τ² assumes May 2024 and does not zero-pad the day ("2024-05-2"), so a connection after an
    overnight leg is only found from the 9th on; searches return exactly what τ² returns.
    """
    return f"2024-05-{int(date[-2:]) + 1}" if "+1" in arrival_time else date


def search_onestop(db: Db, origin: str, destination: str, date: str) -> list[list[Record]]:
    """Pairs of flights via one connecting airport, the second leaving after the first lands."""
    first_legs = [record for _, record in _available(db, [date], origin=origin)]
    arrival_days = {_arrival_day(date, leg["scheduled_arrival_time_est"]) for leg in first_legs}
    second_legs = _available(db, arrival_days, destination=destination) if first_legs else []
    pairs = []
    for first in first_legs:
        arrival = first["scheduled_arrival_time_est"]
        day = _arrival_day(date, arrival)
        for second_day, second in second_legs:
            if (second_day == day and second["origin"] == first["destination"]
                    and second["scheduled_departure_time_est"] >= arrival):
                pairs.append([{**first, "date": date}, {**second, "date": day}])
    return pairs

"""The airline's writes, each split into a plan (every check τ² makes, reading only) and an apply.

A sensitive tool's preflight runs the plan alone, so a bad call is refused with τ²'s text when
it is staged; the tool plans again at commit and applies. Checks come in τ²'s order, so the
first error a call meets is the one τ² reports. Balances and seats are decremented in SQL
(``x = x - n``): the same IEEE arithmetic as τ²'s Python floats, and no lost update when two
turns pay with the same gift card.

τ² fixes what would otherwise vary: the clock (every booking is created at ``NOW``, the
policy's "current time"), the ids of new reservations and certificates (the first of three
fixed ids that is still free), and prices (fees in whole dollars).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, update

from tool_adapters.airline import schema
from tool_adapters.airline.flights import bookable
from tool_adapters.airline.models import (
    CabinClass,
    FlightInfo,
    FlightType,
    Insurance,
    Passenger,
    Payment,
)
from tool_adapters.airline.records import Db, Record, reservation
from tool_adapters.sdk import ToolFailed, ToolRetry

NOW = "2024-05-15T15:00:00"
NEW_RESERVATION_IDS = ("HATHAT", "HATHAU", "HATHAV")
NEW_CERTIFICATE_IDS = ("certificate_3221322", "certificate_3221323", "certificate_3221324")
INSURANCE_FEE = 30  # per passenger
BAG_FEE = 50  # per non-free bag


# -- shared pieces -------------------------------------------------------------------------


def _methods_of(db: Db, user_id: str) -> dict[str, Any]:
    """The user's payment methods by id; τ²'s error when there is no such user."""
    if db.execute(select(schema.users.c.user_id)
                  .where(schema.users.c.user_id == user_id)).first() is None:
        raise ToolRetry(f"User {user_id} not found")
    methods = schema.payment_methods
    return {row.id: row for row in db.execute(select(methods)
                                              .where(methods.c.user_id == user_id))}


def _next_position(db: Db, column: Any, owner: ColumnElement[bool]) -> int:
    return int(db.execute(select(func.coalesce(func.max(column) + 1, 0)).where(owner))
               .scalar_one())


def _append_payments(db: Db, reservation_id: str, entries: Sequence[tuple[str, int]]) -> None:
    if not entries:
        return
    table = schema.payments
    start = _next_position(db, table.c.position, table.c.reservation_id == reservation_id)
    db.execute(insert(table), [
        {"reservation_id": reservation_id, "position": start + index, "payment_id": payment_id,
         "amount": amount}
        for index, (payment_id, amount) in enumerate(entries)
    ])


def _spend(db: Db, user_id: str, payment_id: str, amount: int) -> None:
    """Take ``amount`` off a gift card's balance."""
    methods = schema.payment_methods
    db.execute(update(methods)
               .where(methods.c.user_id == user_id, methods.c.id == payment_id)
               .values(amount=methods.c.amount - amount))


def _replace_rows(db: Db, table: Any, reservation_id: str, rows: Sequence[Record]) -> None:
    db.execute(delete(table).where(table.c.reservation_id == reservation_id))
    if rows:
        db.execute(insert(table), [{"reservation_id": reservation_id, "position": index, **row}
                                   for index, row in enumerate(rows)])


def _set(db: Db, reservation_id: str, **values: Any) -> None:
    table = schema.reservations
    db.execute(update(table).where(table.c.reservation_id == reservation_id).values(**values))


def _leg(db: Db, flight: FlightInfo, cabin: CabinClass, passengers: int) -> Record:
    """A flight to add to a reservation, priced now; refused if full or not bookable."""
    day = bookable(db, flight.flight_number, flight.date)
    if day.seats[cabin] < passengers:
        raise ToolFailed(f"Not enough seats on flight {flight.flight_number}")
    return {"flight_number": day.flight_number, "origin": day.origin,
            "destination": day.destination, "date": day.date, "price": day.prices[cabin]}


# -- paying for a change ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    """What a change to a reservation costs (negative: a refund) and the method paying it."""

    payment_id: str
    amount: int
    gift_card: bool


def plan_charge(db: Db, user_id: str, payment_id: str, amount: int) -> Charge:
    """τ²'s checks on the method paying for a change: on file, not a certificate, enough left."""
    method = _methods_of(db, user_id).get(payment_id)
    if method is None:
        raise ToolRetry("Payment method not found")
    if method.source == "certificate":
        raise ToolRetry("Certificate cannot be used to update reservation")
    gift_card = method.source == "gift_card"
    if gift_card and method.amount < amount:
        raise ToolFailed("Gift card balance is not enough")
    return Charge(payment_id, amount, gift_card)


def _apply_charge(db: Db, user_id: str, reservation_id: str, charge: Charge) -> None:
    if charge.gift_card:
        _spend(db, user_id, charge.payment_id, charge.amount)
    if charge.amount != 0:  # τ² records no payment for a free change
        _append_payments(db, reservation_id, [(charge.payment_id, charge.amount)])


# -- booking ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookingRequest:
    """A booking as the agent asks for it (``book_reservation``'s arguments)."""

    user_id: str
    origin: str
    destination: str
    flight_type: FlightType
    cabin: CabinClass
    flights: list[FlightInfo]
    passengers: list[Passenger]
    payment_methods: list[Payment]
    total_baggages: int
    nonfree_baggages: int
    insurance: Insurance


@dataclass(frozen=True, slots=True)
class Booking:
    """A checked booking: its new id, priced legs, and what each payment method gives up."""

    reservation_id: str
    legs: list[Record]
    gift_cards: list[Payment]
    certificates: list[str]  # used up whole, whatever was paid with them


def _new_reservation_id(db: Db) -> str:
    table = schema.reservations
    taken = set(db.execute(select(table.c.reservation_id)
                           .where(table.c.reservation_id.in_(NEW_RESERVATION_IDS))).scalars())
    free = [rid for rid in NEW_RESERVATION_IDS if rid not in taken]
    if not free:
        raise ToolFailed("Too many reservations")
    return free[0]


def _price(request: BookingRequest, legs: Sequence[Record]) -> int:
    travellers = len(request.passengers)
    total = sum(leg["price"] * travellers for leg in legs)
    if request.insurance == "yes":
        total += INSURANCE_FEE * travellers
    return total + BAG_FEE * request.nonfree_baggages


def _check_payments(methods: dict[str, Any], payments: Sequence[Payment], total: int) -> None:
    for payment in payments:
        method = methods.get(payment.payment_id)
        if method is None:
            raise ToolRetry(f"Payment method {payment.payment_id} not found")
        if method.source in {"gift_card", "certificate"} and method.amount < payment.amount:
            raise ToolFailed(f"Not enough balance in payment method {payment.payment_id}")
    paid = sum(payment.amount for payment in payments)
    if paid != total:
        raise ToolRetry(
            f"Payment amount does not add up, total price is {total}, but paid {paid}")


def _split_by_source(methods: dict[str, Any], payments: Sequence[Payment]
                     ) -> tuple[list[Payment], list[str]]:
    gift_cards: list[Payment] = []
    certificates: list[str] = []
    for payment in payments:
        if payment.payment_id in certificates:
            # τ² deletes a certificate on first use, so a second use fails on the lookup
            # (a KeyError, whose text is the quoted id).
            raise ToolFailed(repr(payment.payment_id))
        source = methods[payment.payment_id].source
        if source == "gift_card":
            gift_cards.append(payment)
        elif source == "certificate":
            certificates.append(payment.payment_id)
    return gift_cards, certificates


def plan_booking(db: Db, request: BookingRequest) -> Booking:
    """Every check τ² makes before booking, in its order; nothing is written."""
    methods = _methods_of(db, request.user_id)
    reservation_id = _new_reservation_id(db)
    legs = [_leg(db, flight, request.cabin, len(request.passengers))
            for flight in request.flights]
    _check_payments(methods, request.payment_methods, _price(request, legs))
    gift_cards, certificates = _split_by_source(methods, request.payment_methods)
    return Booking(reservation_id, legs, gift_cards, certificates)


def apply_booking(db: Db, request: BookingRequest, booking: Booking) -> None:
    """Write a planned booking: the reservation, seats taken, gift cards and certificates."""
    rid, user_id = booking.reservation_id, request.user_id
    owned = schema.reservations
    db.execute(insert(owned).values(
        reservation_id=rid, user_id=user_id,
        user_position=_next_position(db, owned.c.user_position, owned.c.user_id == user_id),
        origin=request.origin, destination=request.destination,
        flight_type=request.flight_type, cabin=request.cabin, created_at=NOW,
        total_baggages=request.total_baggages, nonfree_baggages=request.nonfree_baggages,
        insurance=request.insurance, status=None))
    _replace_rows(db, schema.reservation_flights, rid, booking.legs)
    _replace_rows(db, schema.reservation_passengers, rid,
                  [p.model_dump() for p in request.passengers])
    _append_payments(db, rid, [(p.payment_id, p.amount) for p in request.payment_methods])
    _pay_booking(db, user_id, booking)
    cabins = schema.flight_cabins
    for leg in booking.legs:
        db.execute(update(cabins)
                   .where(cabins.c.flight_number == leg["flight_number"],
                          cabins.c.date == leg["date"], cabins.c.cabin == request.cabin)
                   .values(available_seats=cabins.c.available_seats - len(request.passengers)))


def _pay_booking(db: Db, user_id: str, booking: Booking) -> None:
    for payment in booking.gift_cards:
        _spend(db, user_id, payment.payment_id, payment.amount)
    if booking.certificates:
        methods = schema.payment_methods
        db.execute(delete(methods).where(methods.c.user_id == user_id,
                                         methods.c.id.in_(booking.certificates)))


# -- changing a reservation ------------------------------------------------------------------


def _kept_or_new(db: Db, current: Record, cabin: CabinClass, flight: FlightInfo) -> Record:
    """A leg of the new itinerary: the booked one at its old price when neither it nor the
    cabin changes, else a new leg at today's price (τ²'s rule)."""
    if cabin == current["cabin"]:
        for leg in current["flights"]:
            if (leg["flight_number"], leg["date"]) == (flight.flight_number, flight.date):
                return dict(leg)
    return _leg(db, flight, cabin, len(current["passengers"]))


@dataclass(frozen=True, slots=True)
class FlightChange:
    user_id: str
    legs: list[Record]
    charge: Charge


def plan_flight_change(db: Db, reservation_id: str, cabin: CabinClass,
                       flights: Sequence[FlightInfo], payment_id: str) -> FlightChange:
    """Price the new itinerary against what was paid for the old one, and check the payment."""
    current = reservation(db, reservation_id)
    legs = [_kept_or_new(db, current, cabin, flight) for flight in flights]
    passengers = len(current["passengers"])
    difference = (sum(leg["price"] for leg in legs) * passengers
                  - sum(leg["price"] for leg in current["flights"]) * passengers)
    charge = plan_charge(db, current["user_id"], payment_id, difference)
    return FlightChange(current["user_id"], legs, charge)


def apply_flight_change(db: Db, reservation_id: str, cabin: CabinClass,
                        change: FlightChange) -> None:
    """Like τ², seats on the old and new flights are left as they are."""
    _apply_charge(db, change.user_id, reservation_id, change.charge)
    _replace_rows(db, schema.reservation_flights, reservation_id, change.legs)
    _set(db, reservation_id, cabin=cabin)


def plan_baggage_change(db: Db, reservation_id: str, nonfree_baggages: int,
                        payment_id: str) -> tuple[str, Charge]:
    """The owner and the charge for the extra non-free bags (fewer bags are not refunded)."""
    current = reservation(db, reservation_id)
    extra = max(0, nonfree_baggages - current["nonfree_baggages"])
    return current["user_id"], plan_charge(db, current["user_id"], payment_id, BAG_FEE * extra)


def apply_baggage_change(db: Db, reservation_id: str, user_id: str, charge: Charge,
                         total_baggages: int, nonfree_baggages: int) -> None:
    _apply_charge(db, user_id, reservation_id, charge)
    _set(db, reservation_id, total_baggages=total_baggages, nonfree_baggages=nonfree_baggages)


def cancel(db: Db, reservation_id: str) -> None:
    """Refund every entry of the payment history and mark the reservation cancelled.

    As in τ², nothing is checked beyond the reservation existing (cancelling twice refunds the
    refunds too) and seats are not given back.
    """
    current = reservation(db, reservation_id)
    refunds = [(p["payment_id"], -p["amount"]) for p in current["payment_history"]]
    _append_payments(db, reservation_id, refunds)
    _set(db, reservation_id, status="cancelled")


def replace_passengers(db: Db, reservation_id: str, passengers: Sequence[Passenger]) -> None:
    """Swap in new passenger details; the number of passengers cannot change."""
    current = reservation(db, reservation_id)
    if len(passengers) != len(current["passengers"]):
        raise ToolRetry("Number of passengers does not match")
    _replace_rows(db, schema.reservation_passengers, reservation_id,
                  [p.model_dump() for p in passengers])


# -- certificates ----------------------------------------------------------------------------


def plan_certificate(db: Db, user_id: str) -> str:
    """The id the user's next certificate gets; τ²'s errors for no user or no free id."""
    held = _methods_of(db, user_id)
    free = [cid for cid in NEW_CERTIFICATE_IDS if cid not in held]
    if not free:
        raise ToolFailed("Too many certificates")
    return free[0]


def add_certificate(db: Db, user_id: str, certificate_id: str, amount: int) -> None:
    db.execute(insert(schema.payment_methods).values(
        user_id=user_id, id=certificate_id, source="certificate", amount=float(amount)))

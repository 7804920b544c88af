"""The airline's tools: τ²-bench's airline agent tools, same names, arguments and answers.

Reads are ``safe``. Changing passenger details is ``reversible``. Everything that moves money
or cannot be taken back once the customer is told (booking and paying, paid changes, refunds on
cancellation, issuing a certificate) is ``sensitive``: staged, checked by a preflight that runs
the same checks without writing, and run at commit.
"""

from __future__ import annotations

from typing import Any

from tool_adapters.airline import flights as flight_queries
from tool_adapters.airline import records, schema, service
from tool_adapters.airline.models import (
    CabinClass,
    FlightInfo,
    FlightType,
    Insurance,
    Passenger,
    Payment,
)
from tool_adapters.sdk import Adapter, ToolContext, tool
from tool_adapters.tau2_common import calculate, transfer_to_human_agents

AIRPORTS = (
    ("SFO", "San Francisco"), ("JFK", "New York"), ("LAX", "Los Angeles"), ("ORD", "Chicago"),
    ("DFW", "Dallas"), ("DEN", "Denver"), ("SEA", "Seattle"), ("ATL", "Atlanta"),
    ("MIA", "Miami"), ("BOS", "Boston"), ("PHX", "Phoenix"), ("IAH", "Houston"),
    ("LAS", "Las Vegas"), ("MCO", "Orlando"), ("EWR", "Newark"), ("CLT", "Charlotte"),
    ("MSP", "Minneapolis"), ("DTW", "Detroit"), ("PHL", "Philadelphia"), ("LGA", "LaGuardia"),
)


# -- reads -----------------------------------------------------------------------------------


@tool(effect="safe")
def get_user_details(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """Look up a user's profile: name, address, payment methods with balances, saved
    passengers, membership level and reservation ids.

    Args:
        user_id: The user's id, such as 'sara_doe_496'.
    """
    return records.user(ctx.session, user_id)


@tool(effect="safe")
def get_reservation_details(ctx: ToolContext, reservation_id: str) -> dict[str, Any]:
    """Look up a reservation: flights with the prices paid, passengers, cabin, baggage,
    insurance, payment history and whether it was cancelled.

    Args:
        reservation_id: The reservation's six-character id, such as '8JX2WO'.
    """
    return records.reservation(ctx.session, reservation_id)


@tool(effect="safe")
def list_all_airports(ctx: ToolContext) -> list[dict[str, str]]:
    """List the airports the airline serves, each as its IATA code and city."""
    return [{"iata": iata, "city": city} for iata, city in AIRPORTS]


@tool(effect="safe")
def search_direct_flight(ctx: ToolContext, origin: str, destination: str,
                         date: str) -> list[dict[str, Any]]:
    """Find nonstop flights between two airports on a date that can still be booked, with
    seats left and prices per cabin.

    Args:
        origin: Departure airport as a three-letter IATA code, such as 'JFK'.
        destination: Arrival airport as a three-letter IATA code, such as 'LAX'.
        date: Departure date as YYYY-MM-DD, such as '2024-05-01'.
    """
    return flight_queries.search_direct(ctx.session, origin, destination, date)


@tool(effect="safe")
def search_onestop_flight(ctx: ToolContext, origin: str, destination: str,
                          date: str) -> list[list[dict[str, Any]]]:
    """Find itineraries with exactly one connection between two airports, leaving on a date;
    each is a pair of flights, the second departing after the first arrives.

    Args:
        origin: Departure airport as a three-letter IATA code, such as 'JFK'.
        destination: Final arrival airport as a three-letter IATA code, such as 'LAX'.
        date: Departure date of the first flight as YYYY-MM-DD, such as '2024-05-01'.
    """
    return flight_queries.search_onestop(ctx.session, origin, destination, date)


@tool(effect="safe")
def get_flight_status(ctx: ToolContext, flight_number: str, date: str) -> str:
    """Tell whether a flight on a date is available for booking, on time, delayed, flying,
    landed or cancelled.

    Args:
        flight_number: The flight number, such as 'HAT001'.
        date: The flight's date as YYYY-MM-DD.
    """
    return flight_queries.status(ctx.session, flight_number, date)


# -- writes ----------------------------------------------------------------------------------


def _check_booking(ctx: ToolContext, **arguments: Any) -> None:
    service.plan_booking(ctx.session, service.BookingRequest(**arguments))


@tool(effect="sensitive", preflight=_check_booking)
def book_reservation(ctx: ToolContext, user_id: str, origin: str, destination: str,
                     flight_type: FlightType, cabin: CabinClass, flights: list[FlightInfo],
                     passengers: list[Passenger], payment_methods: list[Payment],
                     total_baggages: int, nonfree_baggages: int,
                     insurance: Insurance) -> dict[str, Any]:
    """Book flights for one or more passengers and pay for them. The payments must add up to
    the fare of every flight for every passenger, plus $30 per passenger with insurance and
    $50 per non-free bag. A certificate is used up whole; gift cards keep what is left.

    Args:
        user_id: The id of the user booking, such as 'sara_doe_496'.
        origin: IATA code of the trip's origin, such as 'SFO'.
        destination: IATA code of the trip's destination, such as 'JFK'.
        flight_type: 'one_way' or 'round_trip'.
        cabin: 'basic_economy', 'economy' or 'business', for every flight.
        flights: Every flight of the trip, each as its number and date.
        passengers: Every traveller, each with first name, last name and date of birth.
        payment_methods: How to pay: payment method ids from the profile with the amount each.
        total_baggages: How many checked bags in total.
        nonfree_baggages: How many of those bags are paid for.
        insurance: 'yes' to add travel insurance, else 'no'.
    """
    request = service.BookingRequest(user_id, origin, destination, flight_type, cabin, flights,
                                     passengers, payment_methods, total_baggages,
                                     nonfree_baggages, insurance)
    booking = service.plan_booking(ctx.session, request)
    service.apply_booking(ctx.session, request, booking)
    return records.reservation(ctx.session, booking.reservation_id)


def _check_cancellation(ctx: ToolContext, reservation_id: str) -> None:
    records.reservation(ctx.session, reservation_id)


@tool(effect="sensitive", preflight=_check_cancellation)
def cancel_reservation(ctx: ToolContext, reservation_id: str) -> dict[str, Any]:
    """Cancel a whole reservation and refund every payment made for it to where it came from.

    Args:
        reservation_id: The reservation's id, such as 'ZFA04Y'.
    """
    service.cancel(ctx.session, reservation_id)
    return records.reservation(ctx.session, reservation_id)


def _check_flight_change(ctx: ToolContext, reservation_id: str, cabin: CabinClass,
                         flights: list[FlightInfo], payment_id: str) -> None:
    service.plan_flight_change(ctx.session, reservation_id, cabin, flights, payment_id)


@tool(effect="sensitive", preflight=_check_flight_change)
def update_reservation_flights(ctx: ToolContext, reservation_id: str, cabin: CabinClass,
                               flights: list[FlightInfo], payment_id: str) -> dict[str, Any]:
    """Change a reservation's flights or cabin. Flights kept in the same cabin keep the price
    paid; new ones cost today's fare. The difference is charged to, or refunded onto, the
    given payment method (not a certificate).

    Args:
        reservation_id: The reservation's id, such as 'ZFA04Y'.
        cabin: The cabin for the whole new itinerary.
        flights: Every flight of the new itinerary, unchanged ones included.
        payment_id: A payment method id from the user's profile, such as
            'credit_card_7815826' or 'gift_card_7815826'.
    """
    change = service.plan_flight_change(ctx.session, reservation_id, cabin, flights,
                                        payment_id)
    service.apply_flight_change(ctx.session, reservation_id, cabin, change)
    return records.reservation(ctx.session, reservation_id)


def _check_baggage_change(ctx: ToolContext, reservation_id: str, total_baggages: int,
                          nonfree_baggages: int, payment_id: str) -> None:
    service.plan_baggage_change(ctx.session, reservation_id, nonfree_baggages, payment_id)


@tool(effect="sensitive", preflight=_check_baggage_change)
def update_reservation_baggages(ctx: ToolContext, reservation_id: str, total_baggages: int,
                                nonfree_baggages: int, payment_id: str) -> dict[str, Any]:
    """Change a reservation's checked bags; each added non-free bag costs $50, charged to the
    given payment method (not a certificate).

    Args:
        reservation_id: The reservation's id, such as 'ZFA04Y'.
        total_baggages: The new total number of checked bags.
        nonfree_baggages: The new number of paid bags among them.
        payment_id: A payment method id from the user's profile, such as
            'credit_card_7815826' or 'gift_card_7815826'.
    """
    user_id, charge = service.plan_baggage_change(ctx.session, reservation_id,
                                                  nonfree_baggages, payment_id)
    service.apply_baggage_change(ctx.session, reservation_id, user_id, charge, total_baggages,
                                 nonfree_baggages)
    return records.reservation(ctx.session, reservation_id)


@tool(effect="reversible")
def update_reservation_passengers(ctx: ToolContext, reservation_id: str,
                                  passengers: list[Passenger]) -> dict[str, Any]:
    """Replace the details of a reservation's passengers; their number cannot change.

    Args:
        reservation_id: The reservation's id, such as 'ZFA04Y'.
        passengers: Every passenger, in order, with first name, last name and date of birth.
    """
    service.replace_passengers(ctx.session, reservation_id, passengers)
    return records.reservation(ctx.session, reservation_id)


def _check_certificate(ctx: ToolContext, user_id: str, amount: int) -> None:
    service.plan_certificate(ctx.session, user_id)


@tool(effect="sensitive", preflight=_check_certificate)
def send_certificate(ctx: ToolContext, user_id: str, amount: int) -> str:
    """Give a user a travel certificate worth an amount, as compensation. Only when the
    policy allows it.

    Args:
        user_id: The id of the user to compensate, such as 'sara_doe_496'.
        amount: The certificate's value in dollars.
    """
    certificate_id = service.plan_certificate(ctx.session, user_id)
    service.add_certificate(ctx.session, user_id, certificate_id, amount)
    return f"Certificate {certificate_id} added to user {user_id} with amount {amount}."


ADAPTER = Adapter(
    name="airline",
    description="τ²-bench's airline: flights, users, reservations, payments and certificates.",
    tools=(
        get_user_details, get_reservation_details, list_all_airports, search_direct_flight,
        search_onestop_flight, get_flight_status, calculate, transfer_to_human_agents,
        book_reservation, cancel_reservation, update_reservation_flights,
        update_reservation_baggages, update_reservation_passengers, send_certificate,
    ),
    metadata=schema.metadata,
    seed=None,
)

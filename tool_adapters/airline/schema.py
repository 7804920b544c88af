"""Tables of the airline: flights and their dated instances, users, reservations.

τ²'s db.json nests everything in dictionaries and lists; here each nested list or dictionary
is a table. Lists whose order τ² keeps (a reservation's flights, passengers and payments, a
user's saved passengers and reservation ids, the flight catalogue searches walk through) carry
an explicit position. Dates and times stay the text τ² uses ("2024-05-15", "06:00:00",
"2024-05-15T06:04:00") so lookups match τ²'s dictionary keys exactly, odd keys included.
Certificate and gift card balances are floats in τ², so they are double precision here. Text
columns have no length limit because τ² has none (a booking stores whatever origin or passenger
name the agent sends).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

flights = Table(
    "airline_flights", metadata,
    Column("flight_number", String, primary_key=True),
    Column("position", Integer, nullable=False),  # order of τ²'s catalogue, which searches keep
    Column("origin", String, nullable=False),
    Column("destination", String, nullable=False),
    Column("scheduled_departure_time_est", String, nullable=False),
    Column("scheduled_arrival_time_est", String, nullable=False),  # may end in "+1"
)

flight_dates = Table(
    "airline_flight_dates", metadata,
    Column("flight_number", ForeignKey("airline_flights.flight_number"), primary_key=True),
    Column("date", String, primary_key=True),
    # available, on time, delayed, flying, landed or cancelled; each status carries its own
    # times in τ² (a landed flight has actual ones, a delayed one estimates), the rest is NULL.
    Column("status", String, nullable=False),
    Column("estimated_departure_time_est", String),
    Column("estimated_arrival_time_est", String),
    Column("actual_departure_time_est", String),
    Column("actual_arrival_time_est", String),
)

flight_cabins = Table(
    "airline_flight_cabins", metadata,  # only for dates still "available" for booking
    Column("flight_number", String, primary_key=True),
    Column("date", String, primary_key=True),
    Column("cabin", String, primary_key=True),  # basic_economy, economy, business
    Column("available_seats", Integer, nullable=False),
    Column("price", Integer, nullable=False),
    ForeignKeyConstraint(["flight_number", "date"],
                         ["airline_flight_dates.flight_number", "airline_flight_dates.date"]),
)

users = Table(
    "airline_users", metadata,
    Column("user_id", String, primary_key=True),
    Column("first_name", String, nullable=False),
    Column("last_name", String, nullable=False),
    Column("email", String, nullable=False),
    Column("dob", String, nullable=False),
    Column("membership", String, nullable=False),  # gold, silver, regular
    # The address is one-to-one with its user, so its columns live here.
    Column("address1", String, nullable=False),
    Column("address2", String),
    Column("city", String, nullable=False),
    Column("country", String, nullable=False),
    Column("state", String, nullable=False),
    Column("zip", String, nullable=False),
)

payment_methods = Table(
    "airline_payment_methods", metadata,
    Column("user_id", ForeignKey("airline_users.user_id"), primary_key=True),
    Column("id", String, primary_key=True),
    Column("source", String, nullable=False),  # credit_card, gift_card, certificate
    Column("brand", String),  # credit cards only
    Column("last_four", String),  # credit cards only
    Column("amount", Double),  # gift cards and certificates: the balance left
)

saved_passengers = Table(
    "airline_saved_passengers", metadata,
    Column("user_id", ForeignKey("airline_users.user_id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("first_name", String, nullable=False),
    Column("last_name", String, nullable=False),
    Column("dob", String, nullable=False),
)

reservations = Table(
    "airline_reservations", metadata,
    Column("reservation_id", String, primary_key=True),
    Column("user_id", ForeignKey("airline_users.user_id"), nullable=False, index=True),
    Column("user_position", Integer, nullable=False),  # place in the user's reservation list
    Column("origin", String, nullable=False),
    Column("destination", String, nullable=False),
    Column("flight_type", String, nullable=False),  # one_way, round_trip
    Column("cabin", String, nullable=False),
    Column("created_at", String, nullable=False),
    Column("total_baggages", Integer, nullable=False),
    Column("nonfree_baggages", Integer, nullable=False),
    Column("insurance", String, nullable=False),  # yes, no
    Column("status", String),  # None, or "cancelled"
)

reservation_flights = Table(
    "airline_reservation_flights", metadata,
    Column("reservation_id", ForeignKey("airline_reservations.reservation_id"),
           primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("flight_number", ForeignKey("airline_flights.flight_number"), nullable=False),
    Column("origin", String, nullable=False),
    Column("destination", String, nullable=False),
    Column("date", String, nullable=False),
    Column("price", Integer, nullable=False),  # per passenger, as paid when booked
)

reservation_passengers = Table(
    "airline_reservation_passengers", metadata,
    Column("reservation_id", ForeignKey("airline_reservations.reservation_id"),
           primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("first_name", String, nullable=False),
    Column("last_name", String, nullable=False),
    Column("dob", String, nullable=False),
)

payments = Table(
    "airline_payments", metadata,  # a reservation's payment history; refunds are negative
    Column("reservation_id", ForeignKey("airline_reservations.reservation_id"),
           primary_key=True),
    Column("position", Integer, primary_key=True),
    # No foreign key: a used certificate is deleted but its payments stay in the history.
    Column("payment_id", String, nullable=False),
    Column("amount", Integer, nullable=False),
)

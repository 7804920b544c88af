"""Reading the tables back into τ²'s shapes: users, reservations and flights as τ² dumps them.

Every reader is set-based (a few queries whatever the number of rows) and takes an optional id
filter, so the tools read one record with the same code the export uses for the whole database.
The getters raise τ²'s "not found" texts for the model to correct the id.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, select, true
from sqlalchemy.orm import Session

from tool_adapters.airline import schema
from tool_adapters.sdk import ToolRetry

Db = Connection | Session
Record = dict[str, Any]
TIME_FIELDS = ("estimated_departure_time_est", "estimated_arrival_time_est",
               "actual_departure_time_est", "actual_arrival_time_est")


def _among(column: ColumnElement[Any], ids: Collection[str] | None) -> ColumnElement[bool]:
    return true() if ids is None else column.in_(list(ids))


def _person(row: Any) -> Record:
    return {"first_name": row.first_name, "last_name": row.last_name, "dob": row.dob}


def _children(db: Db, table: Table, key: str, ids: Collection[str] | None) -> Any:
    """Rows of a positioned child table, grouped by parent in list order."""
    parent = table.c[key]
    return db.execute(select(table).where(_among(parent, ids))
                      .order_by(parent, table.c.position))


def reservations(db: Db, ids: Collection[str] | None = None) -> dict[str, Record]:
    """Reservations by id (all of them when ``ids`` is None), as τ² dumps a ``Reservation``."""
    table = schema.reservations
    records = {
        row.reservation_id: {
            "reservation_id": row.reservation_id, "user_id": row.user_id,
            "origin": row.origin, "destination": row.destination,
            "flight_type": row.flight_type, "cabin": row.cabin, "flights": [],
            "passengers": [], "payment_history": [], "created_at": row.created_at,
            "total_baggages": row.total_baggages, "nonfree_baggages": row.nonfree_baggages,
            "insurance": row.insurance, "status": row.status,
        }
        for row in db.execute(select(table).where(_among(table.c.reservation_id, ids)))
    }
    for row in _children(db, schema.reservation_flights, "reservation_id", ids):
        records[row.reservation_id]["flights"].append({
            "flight_number": row.flight_number, "origin": row.origin,
            "destination": row.destination, "date": row.date, "price": row.price,
        })
    for row in _children(db, schema.reservation_passengers, "reservation_id", ids):
        records[row.reservation_id]["passengers"].append(_person(row))
    for row in _children(db, schema.payments, "reservation_id", ids):
        records[row.reservation_id]["payment_history"].append(
            {"payment_id": row.payment_id, "amount": row.amount})
    return records


def _payment_method(row: Any) -> Record:
    if row.source == "credit_card":
        return {"source": row.source, "id": row.id, "brand": row.brand,
                "last_four": row.last_four}
    return {"source": row.source, "id": row.id, "amount": row.amount}


def users(db: Db, ids: Collection[str] | None = None) -> dict[str, Record]:
    """Users by id (all of them when ``ids`` is None), as τ² dumps a ``User``."""
    records = {
        row.user_id: {
            "user_id": row.user_id,
            "name": {"first_name": row.first_name, "last_name": row.last_name},
            "address": {"address1": row.address1, "address2": row.address2, "city": row.city,
                        "country": row.country, "state": row.state, "zip": row.zip},
            "email": row.email, "dob": row.dob, "payment_methods": {},
            "saved_passengers": [], "membership": row.membership, "reservations": [],
        }
        for row in db.execute(select(schema.users).where(_among(schema.users.c.user_id, ids)))
    }
    methods = schema.payment_methods
    for row in db.execute(select(methods).where(_among(methods.c.user_id, ids))):
        records[row.user_id]["payment_methods"][row.id] = _payment_method(row)
    for row in _children(db, schema.saved_passengers, "user_id", ids):
        records[row.user_id]["saved_passengers"].append(_person(row))
    owned = schema.reservations
    for row in db.execute(select(owned.c.user_id, owned.c.reservation_id)
                          .where(_among(owned.c.user_id, ids))
                          .order_by(owned.c.user_id, owned.c.user_position)):
        records[row.user_id]["reservations"].append(row.reservation_id)
    return records


def flights(db: Db) -> dict[str, Record]:
    """Every flight with its dated instances, as τ² dumps ``FlightDB.flights``."""
    records = {
        row.flight_number: {
            "flight_number": row.flight_number, "origin": row.origin,
            "destination": row.destination,
            "scheduled_departure_time_est": row.scheduled_departure_time_est,
            "scheduled_arrival_time_est": row.scheduled_arrival_time_est, "dates": {},
        }
        for row in db.execute(select(schema.flights).order_by(schema.flights.c.position))
    }
    dates = schema.flight_dates
    query = select(dates.c.flight_number, dates.c.date, dates.c.status,
                   *(dates.c[name] for name in TIME_FIELDS))
    for number, date, status, *times in db.execute(query).all():
        present = {name: value for name, value in zip(TIME_FIELDS, times, strict=True)
                   if value is not None}
        records[number]["dates"][date] = {"status": status, **present}
    for row in db.execute(select(schema.flight_cabins)).all():
        instance = records[row.flight_number]["dates"][row.date]
        instance.setdefault("available_seats", {})[row.cabin] = row.available_seats
        instance.setdefault("prices", {})[row.cabin] = row.price
    return records


def reservation(db: Db, reservation_id: str) -> Record:
    """One reservation; τ²'s error when there is none."""
    found = reservations(db, [reservation_id]).get(reservation_id)
    if found is None:
        raise ToolRetry(f"Reservation {reservation_id} not found")
    return found


def user(db: Db, user_id: str) -> Record:
    """One user; τ²'s error when there is none."""
    found = users(db, [user_id]).get(user_id)
    if found is None:
        raise ToolRetry(f"User {user_id} not found")
    return found

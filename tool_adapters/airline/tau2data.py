"""Moving τ²'s airline database in and out of the tables, in the shape of its ``db.json``.

``load_tau2_db`` fills empty tables from such a dict (a handful of bulk inserts) and
``export_tau2_db`` reads them back, so τ²'s ``FlightDB`` validates the result and hashes it to
the same value as τ²'s own environment in the same state. Neither imports τ².
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, Table, insert

from tool_adapters.airline import records, schema
from tool_adapters.tau2_common.tau2data import user_positions

Rows = list[dict[str, Any]]


def load_tau2_db(conn: Connection, data: Mapping[str, Any]) -> None:
    """Insert τ²'s ``flights``, ``users`` and ``reservations`` into empty airline tables."""
    flights, users, reservations = data["flights"], data["users"], data["reservations"]
    owners = user_positions(users, reservations, "reservations")
    batches: list[tuple[Table, Rows]] = [
        (schema.flights, [_flight_row(position, flight)
                          for position, flight in enumerate(flights.values())]),
        (schema.flight_dates, list(_flight_date_rows(flights))),
        (schema.flight_cabins, list(_cabin_rows(flights))),
        (schema.users, [_user_row(user) for user in users.values()]),
        (schema.payment_methods, [_payment_method_row(user["user_id"], method)
                                  for user in users.values()
                                  for method in user["payment_methods"].values()]),
        (schema.saved_passengers, _positioned(users, "user_id", "saved_passengers")),
        (schema.reservations, [_reservation_row(reservation, owners[rid])
                               for rid, reservation in reservations.items()]),
        (schema.reservation_flights, _positioned(reservations, "reservation_id", "flights")),
        (schema.reservation_passengers,
         _positioned(reservations, "reservation_id", "passengers")),
        (schema.payments, _positioned(reservations, "reservation_id", "payment_history")),
    ]
    for table, rows in batches:
        if rows:
            conn.execute(insert(table), rows)


def export_tau2_db(conn: Connection) -> dict[str, Any]:
    """The tables as a dict shaped like τ²'s ``db.json``."""
    return {"flights": records.flights(conn), "users": records.users(conn),
            "reservations": records.reservations(conn)}


def _flight_row(position: int, flight: Mapping[str, Any]) -> dict[str, Any]:
    return {key: flight[key] for key in ("flight_number", "origin", "destination",
                                         "scheduled_departure_time_est",
                                         "scheduled_arrival_time_est")} | {"position": position}


def _flight_date_rows(flights: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for number, flight in flights.items():
        for date, instance in flight["dates"].items():
            times = {name: instance.get(name) for name in records.TIME_FIELDS}
            yield {"flight_number": number, "date": date, "status": instance["status"], **times}


def _cabin_rows(flights: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for number, flight in flights.items():
        for date, instance in flight["dates"].items():
            seats, prices = instance.get("available_seats", {}), instance.get("prices", {})
            if set(seats) != set(prices):
                raise ValueError(f"flight {number} on {date}: seats and prices name different "
                                 "cabins")
            for cabin, available in seats.items():
                yield {"flight_number": number, "date": date, "cabin": cabin,
                       "available_seats": available, "price": prices[cabin]}


def _user_row(user: Mapping[str, Any]) -> dict[str, Any]:
    address = user["address"]
    return {
        "user_id": user["user_id"], "first_name": user["name"]["first_name"],
        "last_name": user["name"]["last_name"], "email": user["email"], "dob": user["dob"],
        "membership": user["membership"], "address1": address["address1"],
        "address2": address.get("address2"), "city": address["city"],
        "country": address["country"], "state": address["state"], "zip": address["zip"],
    }


def _payment_method_row(user_id: str, method: Mapping[str, Any]) -> dict[str, Any]:
    amount = method.get("amount")
    return {"user_id": user_id, "id": method["id"], "source": method["source"],
            "brand": method.get("brand"), "last_four": method.get("last_four"),
            "amount": None if amount is None else float(amount)}  # τ² holds balances as floats


def _reservation_row(reservation: Mapping[str, Any], user_position: int) -> dict[str, Any]:
    keys = ("reservation_id", "user_id", "origin", "destination", "flight_type", "cabin",
            "created_at", "total_baggages", "nonfree_baggages", "insurance")
    return {key: reservation[key] for key in keys} | {
        "user_position": user_position, "status": reservation.get("status")}


def _positioned(parents: Mapping[str, Any], key: str, field: str) -> Rows:
    """Rows of a positioned child table from each parent's list ``field``."""
    return [{key: parent_id, "position": position, **item}
            for parent_id, parent in parents.items()
            for position, item in enumerate(parent[field])]

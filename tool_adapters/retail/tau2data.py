"""τ²-bench's retail data in and out of the tables, in the shape of τ²'s ``db.json``.

``load_tau2_db`` fills empty tables (one multi-row insert per table); ``export_tau2_db`` reads
them all back with a few set-based queries. What a list's order means to τ² is kept in the
tables' ``position`` columns, so an export hashes exactly like τ²'s own DB in the same state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, Table, insert

from tool_adapters.retail import records
from tool_adapters.retail.schema import (
    ADDRESS_FIELDS,
    fulfillments,
    order_items,
    orders,
    payment_methods,
    payments,
    products,
    users,
    variants,
)
from tool_adapters.tau2_common.tau2data import user_positions

Rows = list[dict[str, Any]]


def _address(data: Mapping[str, Any]) -> dict[str, Any]:
    return {name: data[name] for name in ADDRESS_FIELDS}


def _product_rows(data: Mapping[str, Any]) -> Iterator[tuple[Table, Rows]]:
    catalogue = list(data["products"].values())
    yield products, [{"product_id": p["product_id"], "position": i, "name": p["name"]}
                     for i, p in enumerate(catalogue)]
    yield variants, [
        {"product_id": p["product_id"], "item_id": v["item_id"], "position": i,
         "options": v["options"], "available": v["available"], "price": float(v["price"])}
        for p in catalogue for i, v in enumerate(p["variants"].values())
    ]


def _payment_method_row(user_id: str, position: int, method: Mapping[str, Any]) -> dict[str, Any]:
    balance = method.get("balance")
    return {"user_id": user_id, "payment_method_id": method["id"], "position": position,
            "source": method["source"], "brand": method.get("brand"),
            "last_four": method.get("last_four"),
            "balance": None if balance is None else float(balance)}


def _user_rows(data: Mapping[str, Any]) -> Iterator[tuple[Table, Rows]]:
    people = list(data["users"].values())
    yield users, [
        {"user_id": u["user_id"], "position": i, "first_name": u["name"]["first_name"],
         "last_name": u["name"]["last_name"], "email": u["email"], **_address(u["address"])}
        for i, u in enumerate(people)
    ]
    yield payment_methods, [_payment_method_row(u["user_id"], i, m)
                            for u in people for i, m in enumerate(u["payment_methods"].values())]


def _order_row(order: Mapping[str, Any], position: int, user_position: int) -> dict[str, Any]:
    difference = order.get("exchange_price_difference")
    return {
        "order_id": order["order_id"], "position": position, "user_id": order["user_id"],
        "user_position": user_position, **_address(order["address"]),
        "status": order["status"], "cancel_reason": order.get("cancel_reason"),
        "exchange_items": order.get("exchange_items"),
        "exchange_new_items": order.get("exchange_new_items"),
        "exchange_payment_method_id": order.get("exchange_payment_method_id"),
        "exchange_price_difference": None if difference is None else float(difference),
        "return_items": order.get("return_items"),
        "return_payment_method_id": order.get("return_payment_method_id"),
    }


def _order_rows(data: Mapping[str, Any]) -> Iterator[tuple[Table, Rows]]:
    placed = list(data["orders"].values())
    owners = user_positions(data["users"], data["orders"], "orders")
    yield orders, [_order_row(o, i, owners[o["order_id"]]) for i, o in enumerate(placed)]
    yield order_items, [
        {"order_id": o["order_id"], "position": i, "item_id": item["item_id"],
         "product_id": item["product_id"], "name": item["name"],
         "price": float(item["price"]), "options": item["options"]}
        for o in placed for i, item in enumerate(o["items"])
    ]
    yield fulfillments, [
        {"order_id": o["order_id"], "position": i, "tracking_ids": f["tracking_id"],
         "item_ids": f["item_ids"]}
        for o in placed for i, f in enumerate(o["fulfillments"])
    ]
    yield payments, [
        {"order_id": o["order_id"], "position": i, "transaction_type": p["transaction_type"],
         "amount": float(p["amount"]), "payment_method_id": p["payment_method_id"]}
        for o in placed for i, p in enumerate(o["payment_history"])
    ]


def load_tau2_db(conn: Connection, data: Mapping[str, Any]) -> None:
    """Fill the (empty) retail tables from a dict shaped like τ²'s retail ``db.json``."""
    for rows_of in (_product_rows, _user_rows, _order_rows):
        for table, rows in rows_of(data):
            if rows:
                conn.execute(insert(table), rows)


def export_tau2_db(conn: Connection) -> dict[str, Any]:
    """The whole shop as a dict shaped like τ²'s retail ``db.json``."""
    return {
        "products": records.product_records(conn),
        "users": records.user_records(conn),
        "orders": records.order_records(conn),
    }

"""Reading products, users and orders back in the shape τ² shows them (and keeps in db.json).

Postgres builds each record as JSON, so a tool reads an order, with its items, fulfilments and
payments, in one round trip, and exporting the whole shop takes three queries. Each reader takes
the ids to read, or ``None`` for all, and returns the records keyed by id in the shop's order.

Floats travel as JSON numbers in Postgres's shortest exact form (``extra_float_digits`` at its
default, 1, or above), so they come back bit for bit. Retail records have no integer fields, so
every JSON number is read as a float: a price of ``100.0`` must stay a float, as in τ².
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, Text, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

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

Record = dict[str, Any]
Executor = Connection | Session


def _object(**fields: ColumnElement[Any]) -> ColumnElement[Any]:
    """``json_build_object`` with the keys in this order (they are constants of this module)."""
    pairs = [part for key, value in fields.items()
             for part in (literal_column(f"'{key}'"), value)]
    return func.json_build_object(*pairs)


def _address(table: Table) -> ColumnElement[Any]:
    return _object(**{name: table.c[name] for name in ADDRESS_FIELDS})


def _children(table: Table, key: str, parent: ColumnElement[Any], element: ColumnElement[Any],
              position: ColumnElement[Any]) -> ColumnElement[Any]:
    """The parent's rows of ``table`` as a JSON array in ``position`` order ([] if none)."""
    array = func.json_agg(aggregate_order_by(element, position))
    return (select(func.coalesce(array, literal_column("'[]'::json")))
            .where(table.c[key] == parent).scalar_subquery())


def _records(db: Executor, table: Table, key: str, element: ColumnElement[Any],
             ids: Sequence[str] | None) -> dict[str, Record]:
    """The rows of ``table`` with ``key`` among ``ids`` (all if None) as records keyed by their
    ``key`` field, in ``position`` order."""
    query = select(cast(func.json_agg(aggregate_order_by(element, table.c.position)), Text))
    if ids is not None:
        query = query.where(table.c[key].in_(ids))
    found = db.execute(query).scalar()
    return {} if found is None else {record[key]: record
                                     for record in json.loads(found, parse_int=float)}


_VARIANT = _object(item_id=variants.c.item_id, options=variants.c.options,
                   available=variants.c.available, price=variants.c.price)

_PRODUCT = _object(
    name=products.c.name,
    product_id=products.c.product_id,
    variants=_children(variants, "product_id", products.c.product_id, _VARIANT,
                       variants.c.position),
)


def product_records(db: Executor, product_ids: Sequence[str] | None = None) -> dict[str, Record]:
    """Products with their variants, keyed by product id, in catalogue order."""
    found = _records(db, products, "product_id", _PRODUCT, product_ids)
    for product in found.values():
        product["variants"] = {v["item_id"]: v for v in product["variants"]}
    return found


# Each kind of payment method has its own fields; the others are NULL, and dropped.
_PAYMENT_METHOD = func.json_strip_nulls(_object(
    source=payment_methods.c.source, id=payment_methods.c.payment_method_id,
    brand=payment_methods.c.brand, last_four=payment_methods.c.last_four,
    balance=payment_methods.c.balance,
))

_USER = _object(
    user_id=users.c.user_id,
    name=_object(first_name=users.c.first_name, last_name=users.c.last_name),
    address=_address(users),
    email=users.c.email,
    payment_methods=_children(payment_methods, "user_id", users.c.user_id, _PAYMENT_METHOD,
                              payment_methods.c.position),
    orders=_children(orders, "user_id", users.c.user_id, orders.c.order_id,
                     orders.c.user_position),
)


def user_records(db: Executor, user_ids: Sequence[str] | None = None) -> dict[str, Record]:
    """Users with their payment methods and the ids of their orders, keyed by user id."""
    found = _records(db, users, "user_id", _USER, user_ids)
    for user in found.values():
        user["payment_methods"] = {m["id"]: m for m in user["payment_methods"]}
    return found


_ITEM = _object(name=order_items.c.name, product_id=order_items.c.product_id,
                item_id=order_items.c.item_id, price=order_items.c.price,
                options=order_items.c.options)
_FULFILMENT = _object(tracking_id=fulfillments.c.tracking_ids, item_ids=fulfillments.c.item_ids)
_PAYMENT = _object(transaction_type=payments.c.transaction_type, amount=payments.c.amount,
                   payment_method_id=payments.c.payment_method_id)


def _of_order(table: Table, element: ColumnElement[Any]) -> ColumnElement[Any]:
    return _children(table, "order_id", orders.c.order_id, element, table.c.position)


_ORDER = _object(
    order_id=orders.c.order_id,
    user_id=orders.c.user_id,
    address=_address(orders),
    items=_of_order(order_items, _ITEM),
    status=orders.c.status,
    fulfillments=_of_order(fulfillments, _FULFILMENT),
    payment_history=_of_order(payments, _PAYMENT),
    cancel_reason=orders.c.cancel_reason,
    exchange_items=orders.c.exchange_items,
    exchange_new_items=orders.c.exchange_new_items,
    exchange_payment_method_id=orders.c.exchange_payment_method_id,
    exchange_price_difference=orders.c.exchange_price_difference,
    return_items=orders.c.return_items,
    return_payment_method_id=orders.c.return_payment_method_id,
)


def order_records(db: Executor, order_ids: Sequence[str] | None = None) -> dict[str, Record]:
    """Orders with their items, fulfilments and payment history, keyed by order id."""
    return _records(db, orders, "order_id", _ORDER, order_ids)

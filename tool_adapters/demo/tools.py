"""The demo shop's tools."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, Field
from sqlalchemy import func, insert, select, update

from tool_adapters.demo import schema
from tool_adapters.sdk import Adapter, ToolContext, ToolFailed, ToolRetry, tool


class Item(BaseModel):
    sku: str
    quantity: int
    price_cents: int


class Order(BaseModel):
    order_id: str
    customer: str
    status: str
    items: list[Item]
    total_cents: int


def _order(ctx: ToolContext, order_id: str) -> Order:
    db = ctx.session
    row = db.execute(select(schema.orders).where(schema.orders.c.id == order_id)).first()
    if row is None:
        raise ToolRetry(f"no order {order_id!r}")
    items = [
        Item(sku=r.sku, quantity=r.quantity, price_cents=r.price_cents)
        for r in db.execute(
            select(schema.order_items.c.sku, schema.order_items.c.quantity,
                   schema.products.c.price_cents)
            .join(schema.products, schema.products.c.sku == schema.order_items.c.sku)
            .where(schema.order_items.c.order_id == order_id)
            .order_by(schema.order_items.c.sku)
        )
    ]
    total = sum(i.quantity * i.price_cents for i in items)
    return Order(order_id=row.id, customer=row.customer, status=row.status, items=items,
                 total_cents=total)


@tool(effect="safe")
def list_products(ctx: ToolContext) -> list[dict[str, object]]:
    """List the catalogue with prices and stock."""
    rows = ctx.session.execute(select(schema.products).order_by(schema.products.c.sku))
    return [dict(r._mapping) for r in rows]


@tool(effect="safe")
def get_order(ctx: ToolContext, order_id: str) -> Order:
    """Show an order with its items and total.

    Args:
        order_id: The order, e.g. "O-ann-1".
    """
    return _order(ctx, order_id)


@tool(effect="reversible")
def create_order(ctx: ToolContext, customer: Annotated[str, Field(min_length=1)]) -> Order:
    """Open a new, empty order for a customer.

    Args:
        customer: The customer's name.
    """
    db = ctx.session
    # Numbered per customer from the table, not from a sequence: a sequence would not roll back
    # with the turn, and a global number would make every open turn wait on every other one.
    count = db.execute(select(func.count()).select_from(schema.orders)
                       .where(schema.orders.c.customer == customer)).scalar_one()
    slug = re.sub(r"[^a-z0-9]+", "", customer.lower())[:16] or "x"
    order_id = f"O-{slug}-{count + 1}"
    db.execute(insert(schema.orders).values(id=order_id, customer=customer, status="open"))
    return _order(ctx, order_id)


@tool(effect="reversible")
def add_item(ctx: ToolContext, order_id: str, sku: str,
             quantity: Annotated[int, Field(ge=1, le=100)] = 1) -> Order:
    """Add a product to an open order, taking it from stock.

    Args:
        order_id: The order to add to.
        sku: The product, as listed by list_products.
        quantity: How many.
    """
    db = ctx.session
    order = _order(ctx, order_id)
    if order.status != "open":
        raise ToolFailed(f"order {order_id!r} is {order.status}, items can no longer be added")
    taken = db.execute(
        update(schema.products)
        .where(schema.products.c.sku == sku, schema.products.c.stock >= quantity)
        .values(stock=schema.products.c.stock - quantity)
        .returning(schema.products.c.sku)
    ).first()
    if taken is None:
        known = db.execute(select(schema.products.c.sku).where(schema.products.c.sku == sku))
        if known.first() is None:
            raise ToolRetry(f"unknown product {sku!r}")
        raise ToolFailed(f"not enough {sku!r} in stock for {quantity}")
    existing = db.execute(
        update(schema.order_items)
        .where(schema.order_items.c.order_id == order_id, schema.order_items.c.sku == sku)
        .values(quantity=schema.order_items.c.quantity + quantity)
        .returning(schema.order_items.c.sku)
    ).first()
    if existing is None:
        db.execute(insert(schema.order_items).values(order_id=order_id, sku=sku,
                                                     quantity=quantity))
    return _order(ctx, order_id)


def _check_placeable(ctx: ToolContext, order_id: str, card_last4: str) -> None:
    order = _order(ctx, order_id)
    if order.status != "open":
        raise ToolFailed(f"order {order_id!r} is already {order.status}")
    if not order.items:
        raise ToolRetry(f"order {order_id!r} is empty")


@tool(effect="sensitive", preflight=_check_placeable)
def place_order(ctx: ToolContext, order_id: str,
                card_last4: Annotated[str, Field(pattern=r"^\d{4}$")]) -> Order:
    """Place an order and charge the card on file. Cannot be taken back.

    Args:
        order_id: The order to place.
        card_last4: Last four digits of the card to charge.
    """
    _check_placeable(ctx, order_id, card_last4)
    order = _order(ctx, order_id)
    ctx.session.execute(insert(schema.payments).values(
        order_id=order_id, amount_cents=order.total_cents, card_last4=card_last4))
    ctx.session.execute(update(schema.orders).where(schema.orders.c.id == order_id)
                        .values(status="placed"))
    return _order(ctx, order_id)


_SHIPPING_BASE_CENTS = {"DE": 490, "FR": 690, "US": 1490}


@tool(effect="safe", runner="task")
def shipping_quote(ctx: ToolContext, sku: str, quantity: Annotated[int, Field(ge=1)] = 1,
                   country: str = "DE") -> dict[str, object]:
    """Quote shipping for some units of a product. Runs in the tool worker (runner ``task``),
    where a carrier's rate service would be asked.

    Args:
        sku: The product to ship.
        quantity: How many units.
        country: Destination country code: DE, FR or US.
    """
    base = _SHIPPING_BASE_CENTS.get(country.upper())
    if base is None:
        raise ToolRetry(f"no shipping to {country!r}; choose one of {sorted(_SHIPPING_BASE_CENTS)}")
    found = ctx.session.execute(
        select(schema.products.c.sku).where(schema.products.c.sku == sku)).first()
    if found is None:
        raise ToolRetry(f"no product {sku!r}")
    return {"sku": sku, "quantity": quantity, "country": country.upper(),
            "cost_cents": base + 120 * (quantity - 1)}


ADAPTER = Adapter(
    name="demo",
    description="A small coffee shop: catalogue, orders, payment.",
    tools=(list_products, get_order, create_order, add_item, place_order, shipping_quote),
    metadata=schema.metadata,
    seed=schema.seed,
)

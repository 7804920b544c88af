"""Tables of the demo shop and its seed data."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
)

metadata = MetaData()

products = Table(
    "demo_products", metadata,
    Column("sku", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("stock", Integer, nullable=False),
)

orders = Table(
    "demo_orders", metadata,
    Column("id", String(32), primary_key=True),
    Column("customer", String(200), nullable=False),
    Column("status", String(16), nullable=False),
)

order_items = Table(
    "demo_order_items", metadata,
    Column("order_id", ForeignKey("demo_orders.id"), primary_key=True),
    Column("sku", ForeignKey("demo_products.sku"), primary_key=True),
    Column("quantity", Integer, nullable=False),
)

payments = Table(
    "demo_payments", metadata,
    Column("order_id", ForeignKey("demo_orders.id"), primary_key=True),
    Column("amount_cents", Integer, nullable=False),
    Column("card_last4", String(4), nullable=False),
)

PRODUCTS = [
    {"sku": "espresso", "name": "Espresso beans 1 kg", "price_cents": 2400, "stock": 20},
    {"sku": "grinder", "name": "Hand grinder", "price_cents": 8900, "stock": 3},
    {"sku": "filter", "name": "Paper filters (100)", "price_cents": 500, "stock": 100},
    {"sku": "kettle", "name": "Gooseneck kettle", "price_cents": 6500, "stock": 1},
]


def seed(conn: Connection) -> None:
    """Insert the catalogue once (idempotent)."""
    if conn.execute(select(products.c.sku).limit(1)).first() is None:
        conn.execute(insert(products), PRODUCTS)

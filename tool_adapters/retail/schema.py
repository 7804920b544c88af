"""Tables of the retail shop: catalogue, customers with their payment methods, and orders.

Lists whose order customers (and τ²'s DB hash) can see keep an explicit ``position``. Money is
``double precision`` because τ² keeps it as Python floats and rounds in Python; the tools do the
same arithmetic on the same floats, so every amount matches to the last bit. Product options
(colour, size, ...) differ per product type, so they are a JSON object rather than columns.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON

from tool_adapters.retail.status import OrderStatus

metadata = MetaData()

ADDRESS_FIELDS = ("address1", "address2", "city", "country", "state", "zip")
CANCEL_REASONS = ("no longer needed", "ordered by mistake")
PAYMENT_SOURCES = ("credit_card", "gift_card", "paypal")
TRANSACTION_TYPES = ("payment", "refund")


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})")


def _address_columns() -> list[Column[str]]:
    return [Column(name, Text, nullable=False) for name in ADDRESS_FIELDS]


products = Table(
    "retail_products", metadata,
    Column("product_id", Text, primary_key=True),
    Column("position", Integer, nullable=False),  # catalogue order
    Column("name", Text, nullable=False),
)

variants = Table(
    "retail_variants", metadata,
    Column("product_id", ForeignKey("retail_products.product_id"), primary_key=True),
    Column("item_id", Text, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("options", JSON, nullable=False),
    Column("available", Boolean, nullable=False),
    Column("price", Double, nullable=False),
)

users = Table(
    "retail_users", metadata,
    Column("user_id", Text, primary_key=True),
    Column("position", Integer, nullable=False),  # lookups return the first match in this order
    Column("first_name", Text, nullable=False),
    Column("last_name", Text, nullable=False),
    Column("email", Text, nullable=False),
    *_address_columns(),
    Index("retail_users_zip", "zip"),
)
Index("retail_users_email", func.lower(users.c.email))

payment_methods = Table(
    "retail_payment_methods", metadata,
    Column("user_id", ForeignKey("retail_users.user_id"), primary_key=True),
    Column("payment_method_id", Text, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("source", Text, _one_of("source", PAYMENT_SOURCES), nullable=False),
    Column("brand", Text),  # credit cards only
    Column("last_four", Text),  # credit cards only
    Column("balance", Double),  # gift cards only
    CheckConstraint("(source = 'credit_card') = (brand IS NOT NULL AND last_four IS NOT NULL)"),
    CheckConstraint("(source = 'gift_card') = (balance IS NOT NULL)"),
)

orders = Table(
    "retail_orders", metadata,
    Column("order_id", Text, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("user_id", ForeignKey("retail_users.user_id"), nullable=False),
    Column("user_position", Integer, nullable=False),  # place in the user's list of orders
    *_address_columns(),  # where the order ships
    Column("status", Text, _one_of("status", tuple(OrderStatus)), nullable=False),
    Column("cancel_reason", Text, _one_of("cancel_reason", CANCEL_REASONS)),
    Column("exchange_items", ARRAY(Text)),
    Column("exchange_new_items", ARRAY(Text)),
    Column("exchange_payment_method_id", Text),
    Column("exchange_price_difference", Double),
    Column("return_items", ARRAY(Text)),
    Column("return_payment_method_id", Text),
    Index("retail_orders_user", "user_id", "user_position", unique=True),
)

order_items = Table(
    "retail_order_items", metadata,
    Column("order_id", ForeignKey("retail_orders.order_id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("item_id", Text, nullable=False),
    Column("product_id", ForeignKey("retail_products.product_id"), nullable=False),
    Column("name", Text, nullable=False),  # as sold
    Column("price", Double, nullable=False),  # as sold
    Column("options", JSON, nullable=False),
)

fulfillments = Table(
    "retail_fulfillments", metadata,
    Column("order_id", ForeignKey("retail_orders.order_id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("tracking_ids", ARRAY(Text), nullable=False),
    Column("item_ids", ARRAY(Text), nullable=False),
)

payments = Table(
    "retail_payments", metadata,
    Column("order_id", ForeignKey("retail_orders.order_id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("transaction_type", Text, _one_of("transaction_type", TRANSACTION_TYPES),
           nullable=False),
    Column("amount", Double, nullable=False),
    Column("payment_method_id", Text, nullable=False),
)

"""The demo shop's database, read directly (not through the gateway) to check the demo's claims.

Why directly: the summary says what is *in the database* after the session, and that a plain
sequential run of the kept calls gives the same rows. Both are only worth showing if they are
measured outside the gateway under test.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, create_engine, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tool_adapters.demo import ADAPTER, schema
from tool_adapters.sdk import ToolContext

State = dict[str, list[dict[str, Any]]]
TABLES = (schema.products, schema.orders, schema.order_items, schema.payments)
SEED_STOCK: dict[object, object] = {p["sku"]: p["stock"] for p in schema.PRODUCTS}


def read_state(conn: Connection) -> State:
    """Every row of the shop's tables in primary-key order: equal states, equal shops."""
    return {
        table.name: [dict(r._mapping) for r in conn.execute(
            select(table).order_by(*table.primary_key.columns))]
        for table in TABLES
    }


def snapshot(url: str) -> State:
    """The shop's rows now, on a connection of its own (the gateway's are not involved)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return read_state(conn)
    finally:
        engine.dispose()


def restock(url: str, needs: Mapping[str, int]) -> list[str]:
    """Bring a product the script needs back to its seed stock when earlier runs sold it out,
    so the demo can be run again and again on the same database. Returns the skus restocked."""
    engine = create_engine(url, poolclass=NullPool)
    done = []
    try:
        with engine.begin() as conn:
            for sku, need in needs.items():
                changed = conn.execute(update(schema.products).where(
                    schema.products.c.sku == sku, schema.products.c.stock < need,
                ).values(stock=SEED_STOCK.get(sku, need))).rowcount
                if changed:
                    done.append(sku)
    finally:
        engine.dispose()
    return done


def stock(state: State) -> dict[str, int]:
    """Stock per sku: the number the amend must give back and the commit must take."""
    return {row["sku"]: int(row["stock"]) for row in state[schema.products.name]}


def order_of(state: State, order_id: str) -> dict[str, Any] | None:
    """The order as the database holds it: row, items with product names and prices, payment."""
    order = next((o for o in state[schema.orders.name] if o["id"] == order_id), None)
    if order is None:
        return None
    products = {p["sku"]: p for p in state[schema.products.name]}
    items = [{"sku": i["sku"], "name": products[i["sku"]]["name"], "quantity": i["quantity"],
              "price_cents": products[i["sku"]]["price_cents"]}
             for i in state[schema.order_items.name] if i["order_id"] == order_id]
    payment = next((p for p in state[schema.payments.name] if p["order_id"] == order_id), None)
    return {"order_id": order_id, "customer": order["customer"], "status": order["status"],
            "items": items, "total_cents": sum(i["quantity"] * i["price_cents"] for i in items),
            "payment": payment}


def sequential_state(url: str, before: State, calls: list[tuple[str, dict[str, Any]]]) -> State:
    """The shop after running ``calls`` (tool, resolved arguments) one after the other, directly
    through the tool functions, on a fresh copy of ``before``.

    The copy lives in a scratch schema put first on the search path of one transaction that is
    rolled back, so the reference run never touches (or even sees) the real tables.
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            try:
                _scratch_copy(conn, before)
                _run_sequentially(conn, calls)
                return read_state(conn)
            finally:
                tx.rollback()
    finally:
        engine.dispose()


def _scratch_copy(conn: Connection, state: State) -> None:
    name = f"specgate_demo_ref_{secrets.token_hex(4)}"
    conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    conn.exec_driver_sql(f'SET LOCAL search_path TO "{name}"')
    schema.metadata.create_all(conn)
    for table in schema.metadata.sorted_tables:
        if state[table.name]:
            conn.execute(insert(table), state[table.name])


def _run_sequentially(conn: Connection, calls: list[tuple[str, dict[str, Any]]]) -> None:
    db = Session(bind=conn, join_transaction_mode="create_savepoint")
    try:
        for n, (tool, arguments) in enumerate(calls, 1):
            adapter, _, name = tool.partition(".")
            if adapter != ADAPTER.name:
                raise ValueError(f"the demo only replays {ADAPTER.name!r} tools, not {tool!r}")
            ctx = ToolContext(call_id=f"ref-{n}", idempotency_key=f"ref-{n}", tenant="ref",
                              session_id="ref", turn_id="ref", db=db)
            ADAPTER.tool(name).invoke(ctx, arguments)
        db.commit()  # releases the session's savepoint; the outer transaction is rolled back
    finally:
        db.close()

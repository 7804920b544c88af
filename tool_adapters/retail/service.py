"""The shop's write operations, each split into a check and an apply step.

A check reads what the operation needs and refuses it with τ²'s exact words, in τ²'s order, and
returns the planned change; it writes nothing, so a sensitive tool's preflight is its check with
``lock=False`` (preflights may run in a read-only transaction). The tool runs the check with
``lock=True`` (the order and the gift cards it will change are locked against other turns) and
then applies the plan. Amounts are computed in Python, exactly as τ² computes them, because τ²'s
DB hash sees the float that results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.orm import Session

from tool_adapters.retail import records
from tool_adapters.retail.records import Record
from tool_adapters.retail.schema import (
    CANCEL_REASONS,
    order_items,
    orders,
    payment_methods,
    payments,
    users,
)
from tool_adapters.retail.status import Action, check, leads_to
from tool_adapters.sdk import ToolFailed, ToolRetry


def load_order(db: Session, order_id: str, *, lock: bool = False) -> Record:
    """The order as τ² shows it. ``lock`` takes its row, then its customer's, for the rest of
    the transaction: gift cards are changed only under the customer's lock, so two turns
    changing orders of one customer wait for each other instead of deadlocking on the cards."""
    if lock:
        owner = db.execute(select(orders.c.user_id).where(orders.c.order_id == order_id)
                           .with_for_update()).scalar()
        db.execute(select(users.c.user_id).where(users.c.user_id == owner)
                   .with_for_update(key_share=True))
    order = records.order_records(db, [order_id]).get(order_id)
    if order is None:
        raise ToolRetry("Order not found")
    return order


def load_user(db: Session, user_id: str) -> Record:
    user = records.user_records(db, [user_id]).get(user_id)
    if user is None:
        raise ToolRetry("User not found")
    return user


def load_payment_method(db: Session, user_id: str, payment_method_id: str, *,
                        lock: bool = False) -> Row[Any]:
    """One of the user's payment methods (the order's user always exists: a foreign key)."""
    query = select(payment_methods).where(payment_methods.c.user_id == user_id,
                                          payment_methods.c.payment_method_id == payment_method_id)
    method = db.execute(query.with_for_update() if lock else query).first()
    if method is None:
        raise ToolRetry("Payment method not found")
    return method


def transition(db: Session, order_id: str, action: Action, **recorded: Any) -> None:
    """Move the order to the status ``action`` leads to, writing what the action records."""
    db.execute(update(orders).where(orders.c.order_id == order_id)
               .values(status=leads_to(action).value, **recorded))


def is_gift_card(method: Row[Any]) -> bool:
    return bool(method.source == "gift_card")


def _require_items(order: Record, item_ids: Sequence[str],
                   missing: Callable[[str], str]) -> None:
    """Every id must occur in the order at least as often as in ``item_ids``."""
    in_order = [item["item_id"] for item in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > in_order.count(item_id):
            raise ToolRetry(missing(item_id))


def _first_item(items: Iterable[Record], item_id: str) -> Record | None:
    return next((item for item in items if item["item_id"] == item_id), None)


@dataclass(frozen=True, slots=True)
class Swap:
    """Replacing items by variants of the same products: what it costs, and the last variant
    looked at (τ² gives every replaced item that variant's price and options)."""

    difference: float
    last_variant: Record | None


def _swap(db: Session, order: Record, item_ids: Sequence[str], new_item_ids: Sequence[str],
          *, same_id_refusal: str | None) -> Swap:
    product_ids = sorted({item["product_id"] for item in order["items"]})
    catalogue = records.product_records(db, product_ids)
    difference: float = 0
    variant: Record | None = None
    for item_id, new_item_id in zip(item_ids, new_item_ids, strict=True):
        if same_id_refusal is not None and item_id == new_item_id:
            raise ToolRetry(same_id_refusal)
        item = _first_item(order["items"], item_id)
        if item is None:
            raise ToolRetry(f"Item {item_id} not found")
        product = catalogue.get(item["product_id"])
        if product is None:
            raise ToolRetry("Product not found")
        variant = product["variants"].get(new_item_id)
        if variant is None:
            raise ToolRetry("Variant not found")
        if not variant["available"]:
            raise ToolRetry(f"New item {new_item_id} not found or available")
        difference += variant["price"] - item["price"]
    return Swap(difference, variant)


def _append_payments(db: Session, order: Record, entries: Sequence[Record]) -> None:
    start = len(order["payment_history"])
    db.execute(insert(payments), [
        {"order_id": order["order_id"], "position": start + i, **entry}
        for i, entry in enumerate(entries)
    ])


def _set_balances(db: Session, user_id: str, balances: Mapping[str, float]) -> None:
    for payment_method_id, balance in balances.items():
        db.execute(update(payment_methods)
                   .where(payment_methods.c.user_id == user_id,
                          payment_methods.c.payment_method_id == payment_method_id)
                   .values(balance=balance))


def _entry(transaction_type: str, amount: float, payment_method_id: str) -> Record:
    return {"transaction_type": transaction_type, "amount": float(amount),
            "payment_method_id": payment_method_id}


# --- cancel a pending order -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cancellation:
    order: Record
    reason: str
    refunds: list[Record]
    balances: dict[str, float]  # gift cards refunded at once, by id


def check_cancel(db: Session, order_id: str, reason: str, *, lock: bool) -> Cancellation:
    order = load_order(db, order_id, lock=lock)
    check(Action.CANCEL, order["status"])
    if reason not in CANCEL_REASONS:
        raise ToolRetry("Invalid reason")
    refunds: list[Record] = []
    balances: dict[str, float] = {}
    for payment in order["payment_history"]:
        method_id = payment["payment_method_id"]
        method = load_payment_method(db, order["user_id"], method_id, lock=lock)
        refunds.append(_entry("refund", payment["amount"], method_id))
        if is_gift_card(method):
            balance = balances.get(method_id, method.balance)
            balances[method_id] = round(balance + payment["amount"], 2)
    return Cancellation(order, reason, refunds, balances)


def cancel(db: Session, plan: Cancellation) -> None:
    _set_balances(db, plan.order["user_id"], plan.balances)
    _append_payments(db, plan.order, plan.refunds)
    transition(db, plan.order["order_id"], Action.CANCEL, cancel_reason=plan.reason)


# --- change items of a pending order ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ItemChange:
    order: Record
    payment: Record
    balance: float | None  # the gift card's new balance, if one pays
    changed: dict[int, Record]  # new items by position


def _replaced_items(items: Sequence[Record], item_ids: Sequence[str],
                    new_item_ids: Sequence[str], variant: Record | None) -> dict[int, Record]:
    current = [dict(item) for item in items]
    changed: dict[int, Record] = {}
    for item_id, new_item_id in zip(item_ids, new_item_ids, strict=True):
        # τ² takes the first item with this id *now*, so an item replaced earlier in the same
        # call can be replaced again, and it prices every item like the last variant checked.
        position = next(i for i, item in enumerate(current) if item["item_id"] == item_id)
        assert variant is not None  # there is a pair, so _swap has looked at a variant
        current[position].update(item_id=new_item_id, price=variant["price"],
                                 options=variant["options"])
        changed[position] = current[position]
    return changed


def check_modify_items(db: Session, order_id: str, item_ids: Sequence[str],
                       new_item_ids: Sequence[str], payment_method_id: str, *,
                       lock: bool) -> ItemChange:
    order = load_order(db, order_id, lock=lock)
    check(Action.MODIFY_ITEMS, order["status"])
    _require_items(order, item_ids, lambda item_id: f"{item_id} not found")
    if len(item_ids) != len(new_item_ids):
        raise ToolRetry("The number of items to be exchanged should match")
    swap = _swap(db, order, item_ids, new_item_ids,
                 same_id_refusal="The new item id should be different from the old item id")
    method = load_payment_method(db, order["user_id"], payment_method_id, lock=lock)
    balance = None
    if is_gift_card(method):
        if method.balance < swap.difference:
            raise ToolRetry("Insufficient gift card balance to pay for the new item")
        balance = round(method.balance - swap.difference, 2)
    kind = "payment" if swap.difference > 0 else "refund"
    payment = _entry(kind, abs(swap.difference), payment_method_id)
    changed = _replaced_items(order["items"], item_ids, new_item_ids, swap.last_variant)
    return ItemChange(order, payment, balance, changed)


def modify_items(db: Session, plan: ItemChange) -> None:
    order_id = plan.order["order_id"]
    if plan.balance is not None:
        _set_balances(db, plan.order["user_id"], {plan.payment["payment_method_id"]: plan.balance})
    _append_payments(db, plan.order, [plan.payment])
    for position, item in plan.changed.items():
        db.execute(update(order_items)
                   .where(order_items.c.order_id == order_id, order_items.c.position == position)
                   .values(item_id=item["item_id"], price=item["price"], options=item["options"]))
    transition(db, order_id, Action.MODIFY_ITEMS)


# --- change how a pending order is paid -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PaymentChange:
    order: Record
    entries: list[Record]  # the new payment, then the refund of the old one
    balances: dict[str, float]


def check_modify_payment(db: Session, order_id: str, payment_method_id: str, *,
                         lock: bool) -> PaymentChange:
    order = load_order(db, order_id, lock=lock)
    check(Action.MODIFY_PAYMENT, order["status"])
    method = load_payment_method(db, order["user_id"], payment_method_id, lock=lock)
    history = order["payment_history"]
    if len(history) != 1 or history[0]["transaction_type"] != "payment":
        raise ToolFailed("There should be exactly one payment for a pending order")
    old_id, amount = history[0]["payment_method_id"], history[0]["amount"]
    if old_id == payment_method_id:
        raise ToolRetry("The new payment method should be different from the current one")
    if is_gift_card(method) and method.balance < amount:
        raise ToolRetry("Insufficient gift card balance to pay for the order")
    old_method = load_payment_method(db, order["user_id"], old_id, lock=lock)
    balances = {}
    if is_gift_card(method):
        balances[payment_method_id] = round(method.balance - amount, 2)
    if is_gift_card(old_method):
        balances[old_id] = round(old_method.balance + amount, 2)
    entries = [_entry("payment", amount, payment_method_id), _entry("refund", amount, old_id)]
    return PaymentChange(order, entries, balances)


def modify_payment(db: Session, plan: PaymentChange) -> None:
    _set_balances(db, plan.order["user_id"], plan.balances)
    _append_payments(db, plan.order, plan.entries)


# --- addresses --------------------------------------------------------------------------------

def modify_order_address(db: Session, order_id: str, address: Mapping[str, str]) -> None:
    order = load_order(db, order_id, lock=True)
    check(Action.MODIFY_ADDRESS, order["status"])
    db.execute(update(orders).where(orders.c.order_id == order_id).values(**address))


def modify_user_address(db: Session, user_id: str, address: Mapping[str, str]) -> None:
    changed = db.execute(update(users).where(users.c.user_id == user_id).values(**address)
                         .returning(users.c.user_id)).first()
    if changed is None:
        raise ToolRetry("User not found")


# --- delivered orders: exchange or return -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Exchange:
    order_id: str
    item_ids: list[str]
    new_item_ids: list[str]
    payment_method_id: str
    difference: float


def check_exchange(db: Session, order_id: str, item_ids: Sequence[str],
                   new_item_ids: Sequence[str], payment_method_id: str, *,
                   lock: bool) -> Exchange:
    order = load_order(db, order_id, lock=lock)
    check(Action.EXCHANGE, order["status"])
    _require_items(order, item_ids, lambda item_id: f"Number of {item_id} not found.")
    if len(item_ids) != len(new_item_ids):
        raise ToolRetry("The number of items to be exchanged should match.")
    difference = round(_swap(db, order, item_ids, new_item_ids, same_id_refusal=None)
                       .difference, 2)
    method = load_payment_method(db, order["user_id"], payment_method_id)
    if is_gift_card(method) and method.balance < difference:
        raise ToolRetry("Insufficient gift card balance to pay for the price difference")
    return Exchange(order_id, sorted(item_ids), sorted(new_item_ids), payment_method_id,
                    difference)


def exchange(db: Session, plan: Exchange) -> None:
    transition(db, plan.order_id, Action.EXCHANGE, exchange_items=plan.item_ids,
               exchange_new_items=plan.new_item_ids,
               exchange_payment_method_id=plan.payment_method_id,
               exchange_price_difference=float(plan.difference))


@dataclass(frozen=True, slots=True)
class Return:
    order_id: str
    item_ids: list[str]
    payment_method_id: str


def check_return(db: Session, order_id: str, item_ids: Sequence[str], payment_method_id: str,
                 *, lock: bool) -> Return:
    order = load_order(db, order_id, lock=lock)
    check(Action.RETURN, order["status"])
    method = load_payment_method(db, order["user_id"], payment_method_id)
    history = order["payment_history"]
    original = history[0]["payment_method_id"] if history else None
    if not is_gift_card(method) and payment_method_id != original:
        raise ToolRetry("Payment method should be the original payment method")
    _require_items(order, item_ids, lambda item_id: "Some item not found")
    return Return(order_id, sorted(item_ids), payment_method_id)


def return_items(db: Session, plan: Return) -> None:
    transition(db, plan.order_id, Action.RETURN, return_items=plan.item_ids,
               return_payment_method_id=plan.payment_method_id)

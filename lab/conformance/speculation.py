"""Wrong early calls for the speculative replay: one argument of a gold write changed to a
plausible wrong value, as when the agent acts on a half-heard or misheard request.

Which argument, per tool: the one a caller most plausibly gets wrong and that makes the wrong
call do something real where it can (another pending order of the same customer, another
customer, another street, another colour of the same product, another item of the same
order, one more bag, a misheard passenger name), so that amending it must undo an effect
rather than only replace a failure. The values come from τ²'s seed data, chosen
deterministically (the first candidate in the seed's order that differs from the gold value).
A write tool not listed here gets its record id or first string argument changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lab.conformance import reference

# tool → the argument the wrong early call gets wrong
WRONG_ARGUMENT: dict[str, dict[str, str]] = {
    "retail": {
        "cancel_pending_order": "order_id",
        "exchange_delivered_order_items": "new_item_ids",
        "modify_pending_order_address": "address1",
        "modify_pending_order_items": "new_item_ids",
        "modify_pending_order_payment": "payment_method_id",
        "modify_user_address": "user_id",
        "return_delivered_order_items": "item_ids",
    },
    "airline": {
        "book_reservation": "total_baggages",
        "cancel_reservation": "reservation_id",
        "send_certificate": "amount",
        "update_reservation_baggages": "reservation_id",
        "update_reservation_flights": "reservation_id",
        "update_reservation_passengers": "passengers",
    },
}
MISHEARD = " (misheard)"


@dataclass(frozen=True)
class SeedIndex:
    """What the wrong values are picked from: records keyed by id, in the seed's order."""

    users: dict[str, Any]
    records: dict[str, Any]  # orders (retail) or reservations (airline)
    products: dict[str, Any]  # retail only
    record_key: str
    payment_key: str
    by_user: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, domain: str) -> SeedIndex:
        data = reference.seed_data(domain)
        records = data["orders"] if domain == "retail" else data["reservations"]
        by_user: dict[str, list[str]] = {}
        for record_id, record in records.items():
            by_user.setdefault(record["user_id"], []).append(record_id)
        return cls(users=data["users"], records=records, products=data.get("products", {}),
                   record_key="order_id" if domain == "retail" else "reservation_id",
                   payment_key="payment_method_id" if domain == "retail" else "payment_id",
                   by_user=by_user)

    def other_record(self, record_id: str) -> str | None:
        """Another record of the same customer, in the same status when there is one."""
        record = self.records.get(record_id)
        if record is None:
            return _other(list(self.records), record_id)
        siblings = [r for r in self.by_user.get(record["user_id"], []) if r != record_id]
        alike = [r for r in siblings if self.records[r].get("status") == record.get("status")]
        return (alike or siblings)[0] if siblings else _other(list(self.records), record_id)

    def other_payment(self, arguments: Mapping[str, Any], payment_id: str) -> str | None:
        """Another payment method of the customer the call is about."""
        owner = self.owner(arguments)
        methods = list(self.users.get(owner, {}).get("payment_methods", {})) if owner else []
        return _other(methods, payment_id)

    def owner(self, arguments: Mapping[str, Any]) -> str | None:
        if "user_id" in arguments:
            return str(arguments["user_id"])
        record = self.records.get(str(arguments.get(self.record_key, "")))
        return None if record is None else str(record["user_id"])

    def other_user(self, user_id: str) -> str | None:
        return _other(list(self.users), user_id)

    def other_street(self, street: str) -> str:
        streets = [u["address"]["address1"] for u in self.users.values()]
        return _other(streets, street) or street + MISHEARD


    def other_variant(self, item_id: str, taken: list[str]) -> str | None:
        """Another available variant of the product ``item_id`` is a variant of."""
        for product in self.products.values():
            variants = product["variants"]
            if item_id in variants:
                return _other([i for i, v in variants.items()
                               if v["available"] and i not in taken], item_id)
        return None

    def other_item(self, order_id: str, item_ids: list[str]) -> list[str] | None:
        """The order's items with the first one swapped for another item of the order, or
        one item fewer."""
        items = [i["item_id"] for i in self.records.get(order_id, {}).get("items", [])]
        spare = [i for i in items if i not in item_ids]
        if spare and item_ids:
            return [spare[0], *item_ids[1:]]
        return item_ids[:-1] if len(item_ids) > 1 else None

    def other_first_name(self, name: str) -> str:
        names = [u["name"]["first_name"] for u in self.users.values()]
        return _other(names, name) or name + MISHEARD


def _other(candidates: list[str], value: str) -> str | None:
    return next((c for c in candidates if c != value), None)


@cache
def seed_index(domain: str) -> SeedIndex:
    return SeedIndex.of(domain)


def wrong_arguments(domain: str, tool: str, arguments: Mapping[str, Any]
                    ) -> tuple[str, dict[str, Any]] | None:
    """(the changed argument, the wrong arguments) for a gold write, or None when it has no
    argument that could be wrong. The tool's listed argument first; when it offers no other
    value (an order with one item), the record id; then any string argument, changed."""
    index = seed_index(domain)
    preferred = WRONG_ARGUMENT.get(domain, {}).get(tool)
    candidates = [n for n in (preferred, index.record_key, *arguments) if n in arguments]
    for name in dict.fromkeys(str(n) for n in candidates):
        value = _wrong_value(index, name, arguments)
        if value is None and isinstance(arguments[name], str):
            value = f"{arguments[name]}{MISHEARD}"
        if value is not None and value != arguments[name]:
            return name, {**arguments, name: value}
    return None


def _wrong_value(index: SeedIndex, name: str, arguments: Mapping[str, Any]) -> Any:
    value = arguments[name]
    if name == index.record_key:
        return index.other_record(str(value))
    if name == index.payment_key:
        return index.other_payment(arguments, str(value))
    if name == "user_id":
        return index.other_user(str(value))
    if name == "address1":
        return index.other_street(str(value))
    if name == "insurance":
        return "no" if value == "yes" else "yes"
    if name in ("amount", "total_baggages") and isinstance(value, int | float):
        return value + (50 if name == "amount" else 1)
    return _wrong_list(index, name, arguments)


def _wrong_list(index: SeedIndex, name: str, arguments: Mapping[str, Any]) -> Any:
    value = arguments[name]
    if not isinstance(value, list) or not value:
        return None
    if name == "new_item_ids":
        old = list(arguments.get("item_ids") or [])
        other = index.other_variant(value[0], [*old, *value])
        return None if other is None else [other, *value[1:]]
    if name == "item_ids":
        return index.other_item(str(arguments.get("order_id")), value)
    if name == "passengers" and isinstance(value[0], dict) and "first_name" in value[0]:
        first = {**value[0], "first_name": index.other_first_name(value[0]["first_name"])}
        return [first, *value[1:]]
    return None

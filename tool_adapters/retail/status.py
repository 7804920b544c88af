"""An order's status as data: which action may start from which status, and where it leads.

``check`` refuses an action in the wrong status with τ²'s words; ``service.transition`` is the
only code that writes ``retail_orders.status``, to the status ``leads_to`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tool_adapters.sdk import ToolFailed


class OrderStatus(StrEnum):
    PROCESSED = "processed"
    PENDING = "pending"
    PENDING_ITEM_MODIFIED = "pending (item modified)"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    EXCHANGE_REQUESTED = "exchange requested"
    RETURN_REQUESTED = "return requested"


class Action(StrEnum):
    CANCEL = "cancel"
    MODIFY_ITEMS = "modify items"
    MODIFY_ADDRESS = "modify address"
    MODIFY_PAYMENT = "modify payment"
    EXCHANGE = "exchange"
    RETURN = "return"


@dataclass(frozen=True, slots=True)
class Rule:
    allowed: frozenset[OrderStatus]
    leads_to: OrderStatus | None  # None: the status stays as it is
    refusal: str


_PENDING = frozenset({OrderStatus.PENDING})
_STILL_PENDING = frozenset({OrderStatus.PENDING, OrderStatus.PENDING_ITEM_MODIFIED})
_DELIVERED = frozenset({OrderStatus.DELIVERED})

RULES: dict[Action, Rule] = {
    Action.CANCEL: Rule(_PENDING, OrderStatus.CANCELLED, "Non-pending order cannot be cancelled"),
    # Items can be changed once only: the new status no longer allows it.
    Action.MODIFY_ITEMS: Rule(_PENDING, OrderStatus.PENDING_ITEM_MODIFIED,
                              "Non-pending order cannot be modified"),
    Action.MODIFY_ADDRESS: Rule(_STILL_PENDING, None, "Non-pending order cannot be modified"),
    Action.MODIFY_PAYMENT: Rule(_STILL_PENDING, None, "Non-pending order cannot be modified"),
    Action.EXCHANGE: Rule(_DELIVERED, OrderStatus.EXCHANGE_REQUESTED,
                          "Non-delivered order cannot be exchanged"),
    Action.RETURN: Rule(_DELIVERED, OrderStatus.RETURN_REQUESTED,
                        "Non-delivered order cannot be returned"),
}


def check(action: Action, status: str) -> None:
    """Refuse ``action`` unless an order in ``status`` allows it."""
    if status not in RULES[action].allowed:
        raise ToolFailed(RULES[action].refusal)


def leads_to(action: Action) -> OrderStatus:
    """The status an order takes when ``action`` is done to it."""
    status = RULES[action].leads_to
    if status is None:
        raise ValueError(f"action {action.value!r} does not change an order's status")
    return status

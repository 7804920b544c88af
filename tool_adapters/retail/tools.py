"""The retail shop's tools, named and typed exactly like τ²-bench's retail tools.

Each returns what τ²'s tool returns, as JSON: an order, a user or a product as τ² shows them,
or plain text. Errors carry τ²'s exact texts: ``ToolRetry`` when other arguments could succeed
(an unknown id, an unavailable item, a payment method that cannot pay), ``ToolFailed`` when the
order's state rules the action out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from tool_adapters.retail import records, schema, service
from tool_adapters.retail.records import Record
from tool_adapters.sdk import Adapter, ToolContext, ToolRetry, tool
from tool_adapters.tau2_common import calculate, transfer_to_human_agents

# --- reads ------------------------------------------------------------------------------------


@tool(effect="safe")
def find_user_id_by_email(ctx: ToolContext, email: str) -> str:
    """Look up a customer's user id by their email address (case does not matter). Try this
    first; use the name and zip code lookup only when the email is unknown or not found.

    Args:
        email: The customer's email address, e.g. 'jane.roe123@example.com'.
    """
    users = schema.users
    found = ctx.session.execute(
        select(users.c.user_id).where(func.lower(users.c.email) == email.lower())
        .order_by(users.c.position).limit(1)
    ).scalar()
    if found is None:
        raise ToolRetry("User not found")
    return str(found)


@tool(effect="safe")
def find_user_id_by_name_zip(ctx: ToolContext, first_name: str, last_name: str, zip: str) -> str:
    """Look up a customer's user id by first name, last name (case does not matter) and the zip
    code of their default address. Use it only when the email lookup is not possible.

    Args:
        first_name: The customer's first name, e.g. 'Jane'.
        last_name: The customer's last name, e.g. 'Roe'.
        zip: The zip code of the customer's address, e.g. '90210'.
    """
    users = schema.users
    candidates = ctx.session.execute(
        select(users.c.user_id, users.c.first_name, users.c.last_name)
        .where(users.c.zip == zip).order_by(users.c.position)
    )
    for user in candidates:
        if (user.first_name.lower() == first_name.lower()
                and user.last_name.lower() == last_name.lower()):
            return str(user.user_id)
    raise ToolRetry("User not found")


@tool(effect="safe")
def get_user_details(ctx: ToolContext, user_id: str) -> Record:
    """Show a customer's profile: name, default address, email, payment methods (with gift card
    balances) and the ids of their orders.

    Args:
        user_id: The customer's user id, e.g. 'jane_roe_1234'.
    """
    return service.load_user(ctx.session, user_id)


@tool(effect="safe")
def get_order_details(ctx: ToolContext, order_id: str) -> Record:
    """Show an order: status, items with prices, shipping address, fulfilments and payments.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
    """
    return service.load_order(ctx.session, order_id)


@tool(effect="safe")
def get_product_details(ctx: ToolContext, product_id: str) -> Record:
    """Show a product type and all its variants (items), with their options, price and whether
    they are in stock.

    Args:
        product_id: The product id, e.g. '1234567890'. Not an item id: items are variants.
    """
    product = records.product_records(ctx.session, [product_id]).get(product_id)
    if product is None:
        raise ToolRetry("Product not found")
    return product


@tool(effect="safe")
def list_all_product_types(ctx: ToolContext) -> str:
    """List every product type the shop sells (there are about fifty): a JSON object mapping
    each product name to its product id, sorted by name."""
    products = schema.products
    rows = ctx.session.execute(
        select(products.c.name, products.c.product_id).order_by(products.c.position))
    return json.dumps({row.name: row.product_id for row in rows}, sort_keys=True)


# --- reversible writes: plain data the shop can change back -----------------------------------


@tool(effect="reversible")
def modify_pending_order_address(ctx: ToolContext, order_id: str, address1: str, address2: str,
                                 city: str, state: str, country: str, zip: str) -> Record:
    """Change where a pending order ships to. Explain the change and get the customer's
    explicit yes before calling. Returns the updated order.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
        address1: First address line, e.g. '12 Elm Street'.
        address2: Second address line, e.g. 'Suite 4', or '' if there is none.
        city: City, e.g. 'Austin'.
        state: State, e.g. 'TX'.
        country: Country, e.g. 'USA'.
        zip: Zip code, e.g. '73301'.
    """
    address = {"address1": address1, "address2": address2, "city": city, "state": state,
               "country": country, "zip": zip}
    service.modify_order_address(ctx.session, order_id, address)
    return service.load_order(ctx.session, order_id)


@tool(effect="reversible")
def modify_user_address(ctx: ToolContext, user_id: str, address1: str, address2: str, city: str,
                        state: str, country: str, zip: str) -> Record:
    """Change a customer's default address (orders already placed keep theirs). Explain the
    change and get the customer's explicit yes before calling. Returns the updated profile.

    Args:
        user_id: The customer's user id, e.g. 'jane_roe_1234'.
        address1: First address line, e.g. '12 Elm Street'.
        address2: Second address line, e.g. 'Suite 4', or '' if there is none.
        city: City, e.g. 'Austin'.
        state: State, e.g. 'TX'.
        country: Country, e.g. 'USA'.
        zip: Zip code, e.g. '73301'.
    """
    address = {"address1": address1, "address2": address2, "city": city, "state": state,
               "country": country, "zip": zip}
    service.modify_user_address(ctx.session, user_id, address)
    return service.load_user(ctx.session, user_id)


# --- sensitive writes: money moves or the customer is committed; staged until commit ---------


def _preflight(check: Callable[..., object]) -> Callable[..., None]:
    """A sensitive tool's preflight: its service check (which takes the tool's arguments by
    name) without locks or writes, so a call the shop would refuse is refused with τ²'s words
    when it is staged; the tool runs the same check again, locking, when it runs."""

    def preflight(ctx: ToolContext, **arguments: Any) -> None:
        check(ctx.session, **arguments, lock=False)

    return preflight


@tool(effect="sensitive", preflight=_preflight(service.check_cancel))
def cancel_pending_order(ctx: ToolContext, order_id: str, reason: str) -> Record:
    """Cancel a pending order (not one already processed or delivered) and refund it: at once
    to a gift card, in 5-7 business days to other payment methods. Explain the cancellation and
    get the customer's explicit yes before calling. Returns the cancelled order.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
        reason: Either 'no longer needed' or 'ordered by mistake'.
    """
    plan = service.check_cancel(ctx.session, order_id, reason, lock=True)
    service.cancel(ctx.session, plan)
    return service.load_order(ctx.session, order_id)


@tool(effect="sensitive", preflight=_preflight(service.check_modify_items))
def modify_pending_order_items(ctx: ToolContext, order_id: str, item_ids: list[str],
                               new_item_ids: list[str], payment_method_id: str) -> Record:
    """Swap items of a pending order for other variants of the same products, charging or
    refunding the price difference. An order's items can be changed only once, so collect
    every change first; explain them and get the customer's explicit yes before calling.
    Returns the updated order.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
        item_ids: Item ids in the order to replace, e.g. ['1234567890']; repeat an id to
            replace several units of it.
        new_item_ids: The replacement item ids, matched by position with item_ids; each must be
            another variant of the same product.
        payment_method_id: The customer's payment method that pays or receives the difference,
            e.g. 'gift_card_1234567' or 'credit_card_1234567'.
    """
    plan = service.check_modify_items(ctx.session, order_id, item_ids, new_item_ids,
                                      payment_method_id, lock=True)
    service.modify_items(ctx.session, plan)
    return service.load_order(ctx.session, order_id)


@tool(effect="sensitive", preflight=_preflight(service.check_modify_payment))
def modify_pending_order_payment(ctx: ToolContext, order_id: str,
                                 payment_method_id: str) -> Record:
    """Pay a pending order with another of the customer's payment methods: the new one is
    charged the order total and the original one refunded. Explain the change and get the
    customer's explicit yes before calling. Returns the updated order.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
        payment_method_id: The new payment method, e.g. 'gift_card_1234567' or
            'paypal_1234567'; a gift card must cover the whole total.
    """
    plan = service.check_modify_payment(ctx.session, order_id, payment_method_id, lock=True)
    service.modify_payment(ctx.session, plan)
    return service.load_order(ctx.session, order_id)


@tool(effect="sensitive", preflight=_preflight(service.check_exchange))
def exchange_delivered_order_items(ctx: ToolContext, order_id: str, item_ids: list[str],
                                   new_item_ids: list[str], payment_method_id: str) -> Record:
    """Request an exchange of delivered items for other variants of the same products; the
    price difference is charged or refunded. A delivered order can be exchanged or returned
    only once, so collect every item first; explain the exchange and get the customer's
    explicit yes before calling. Returns the order, now 'exchange requested'.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
        item_ids: Item ids in the order to exchange, e.g. ['1234567890']; repeat an id to
            exchange several units of it.
        new_item_ids: The item ids wanted instead, matched by position with item_ids; each must
            be a variant of the same product.
        payment_method_id: The customer's payment method that pays or receives the difference,
            e.g. 'gift_card_1234567' or 'credit_card_1234567'.
    """
    plan = service.check_exchange(ctx.session, order_id, item_ids, new_item_ids,
                                  payment_method_id, lock=True)
    service.exchange(ctx.session, plan)
    return service.load_order(ctx.session, order_id)


@tool(effect="sensitive", preflight=_preflight(service.check_return))
def return_delivered_order_items(ctx: ToolContext, order_id: str, item_ids: list[str],
                                 payment_method_id: str) -> Record:
    """Request a return of delivered items, refunded to the original payment method or to a
    gift card; the customer gets an email on how to send them back. A delivered order can be
    exchanged or returned only once; explain the return and get the customer's explicit yes
    before calling. Returns the order, now 'return requested'.

    Args:
        order_id: The order id, which starts with '#', e.g. '#W1234567'.
        item_ids: Item ids in the order to return, e.g. ['1234567890']; repeat an id to return
            several units of it.
        payment_method_id: Where the refund goes: the order's original payment method or one
            of the customer's gift cards.
    """
    plan = service.check_return(ctx.session, order_id, item_ids, payment_method_id, lock=True)
    service.return_items(ctx.session, plan)
    return service.load_order(ctx.session, order_id)


ADAPTER = Adapter(
    name="retail",
    description="τ²-bench's retail shop: customers, orders, returns and exchanges.",
    tools=(
        calculate, cancel_pending_order, exchange_delivered_order_items, find_user_id_by_email,
        find_user_id_by_name_zip, get_order_details, get_product_details, get_user_details,
        list_all_product_types, modify_pending_order_address, modify_pending_order_items,
        modify_pending_order_payment, modify_user_address, return_delivered_order_items,
        transfer_to_human_agents,
    ),
    metadata=schema.metadata,
    seed=None,
)

"""A calendar reached over HTTP: the adapter for tools that write to someone else's system.

Unlike the demo shop, nothing here is inside the gateway's transaction, so every tool runs on the
``task`` runner: ``book_slot`` is undone by a compensating cancel, ``confirm_booking`` only runs
once the turn commits. ``service.py`` is a small stand-in for the real booking API.
"""

from tool_adapters.booking.tools import (
    ADAPTER,
    DEFAULT_SETTINGS,
    BookingUnavailable,
    book_slot,
    cancel_booked_slot,
    confirm_booking,
    find_slots,
    get_booking,
)

__all__ = [
    "ADAPTER",
    "DEFAULT_SETTINGS",
    "BookingUnavailable",
    "book_slot",
    "cancel_booked_slot",
    "confirm_booking",
    "find_slots",
    "get_booking",
]

"""The booking adapter's tools: thin HTTP calls to the booking service (see ``service.py``).

Every tool runs on the ``task`` runner, because the service is outside any transaction of ours.
Failures are sorted three ways, since each asks the tool worker for something different:

* ``ToolRetry`` — the service refused the arguments (bad day, unknown booking id): the model
  hears the service's reason and may call again with other arguments;
* ``ToolFailed`` — the call cannot succeed (the slot is taken, the booking was cancelled);
* ``BookingUnavailable`` (a plain ``RuntimeError``) — the service is down, timed out or answered
  5xx/429: nothing is wrong with the call, so the worker retries it later. Writes carry the
  call's ``ctx.idempotency_key``, so a retry after a lost answer never books twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from pydantic import Field

from tool_adapters.sdk import Adapter, ToolContext, ToolFailed, ToolRetry, tool

DEFAULT_SETTINGS: Mapping[str, Any] = {"base_url": "http://127.0.0.1:8025", "timeout_s": 5.0}
"""Used for any key missing from the adapter's settings (``adapter_settings["booking"]``)."""

TOOL_TIMEOUT_S = 15.0
"""The gateway's deadline for one call: above the HTTP timeout, which applies per phase."""

_TRANSIENT = frozenset({408, 425, 429})  # 4xx codes that mean "later", not "wrong arguments"


BookingId = Annotated[str, Field(min_length=1, max_length=100)]


class BookingUnavailable(RuntimeError):
    """The booking service could not serve the request now; the same call may succeed later."""


def _setting(ctx: ToolContext, key: str) -> Any:
    return ctx.settings.get(key, DEFAULT_SETTINGS[key])


def _send(
    ctx: ToolContext,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    keyed: bool = False,
) -> httpx.Response:
    """One request to the service; raises ``BookingUnavailable`` for anything transient.

    A timeout on a write is transient too: the write may or may not have happened, and only
    the retry (with the same idempotency key) can tell.
    """
    headers = {"Idempotency-Key": ctx.idempotency_key} if keyed else {}
    base_url = str(_setting(ctx, "base_url"))
    try:
        with httpx.Client(base_url=base_url, timeout=float(_setting(ctx, "timeout_s"))) as client:
            response = client.request(method, path, params=params, json=body, headers=headers)
    except httpx.TransportError as error:
        raise BookingUnavailable(
            f"booking service at {base_url} unreachable ({type(error).__name__}: {error})"
        ) from error
    if response.status_code >= 500 or response.status_code in _TRANSIENT:
        raise BookingUnavailable(
            f"booking service answered {response.status_code} to {method} {path}"
        )
    return response


def _path(booking_id: str, *rest: str) -> str:
    """The URL path of a booking; the id is quoted so it can only ever name one booking."""
    return "/".join(["/bookings", quote(booking_id, safe=""), *rest])


def _detail(response: httpx.Response) -> str:
    """The service's reason for refusing a request, readable by the model."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's request validation errors
        problems = []
        for item in detail:
            if isinstance(item, Mapping):
                where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
                problems.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        if problems:
            return "; ".join(problems)
    return f"the booking service refused the request ({response.status_code})"


def _unexpected(response: httpx.Response) -> RuntimeError:
    """An answer the service should never give; a bug somewhere, not something to tell the model."""
    return RuntimeError(
        f"unexpected answer {response.status_code} from booking service: {response.text[:200]}"
    )


def _refused(response: httpx.Response) -> Exception:
    """The error for an answer the tool did not handle: a 4xx the model can fix its arguments
    for, anything else unexpected (retried by the worker)."""
    if 400 <= response.status_code < 500:
        return ToolRetry(_detail(response))
    return _unexpected(response)


def _booking(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    if not isinstance(data, dict):
        raise _unexpected(response)
    return data


@tool(effect="safe", runner="task", timeout_s=TOOL_TIMEOUT_S)
def find_slots(ctx: ToolContext, resource: Annotated[str, Field(min_length=1)],
               day: str) -> list[str]:
    """List the free one-hour slots of a resource on a day (opening hours 09:00-17:00).

    Args:
        resource: What to book, e.g. "room-a" or "dr-lee".
        day: The day, as YYYY-MM-DD.
    """
    response = _send(ctx, "GET", "/slots", params={"resource": resource, "day": day})
    if response.status_code == 200:
        slots = response.json()
        if isinstance(slots, list):
            return [str(slot) for slot in slots]
    raise _refused(response)


def cancel_booked_slot(
    ctx: ToolContext, resource: str, start: str, name: str, *, result: Any
) -> dict[str, Any]:
    """Undo ``book_slot``: cancel the booking it made. Safe to run any number of times.

    A booking that is already cancelled, or unknown to the service, counts as undone. Anything
    transient raises, so the worker retries the compensation with backoff rather than leaving
    a slot held by a call that was cancelled.
    """
    booking_id = result.get("id") if isinstance(result, Mapping) else None
    if not isinstance(booking_id, str) or not booking_id:
        raise ToolFailed(f"cannot undo book_slot: its result names no booking id ({result!r})")
    response = _send(ctx, "DELETE", _path(booking_id))
    if response.status_code == 200:
        return _booking(response)
    if response.status_code == 404:
        return {"id": booking_id, "status": "not_found"}
    raise _unexpected(response)


@tool(effect="reversible", runner="task", compensate=cancel_booked_slot,
      timeout_s=TOOL_TIMEOUT_S)
def book_slot(ctx: ToolContext, resource: Annotated[str, Field(min_length=1)], start: str,
              name: Annotated[str, Field(min_length=1)]) -> dict[str, Any]:
    """Book a free slot for someone. The booking holds the slot until it is confirmed.

    Args:
        resource: What to book, as given to find_slots.
        start: Start of the slot, exactly as find_slots lists it, e.g. "2030-01-31T09:00".
        name: Who the booking is for.

    Raises:
        ToolFailed: The slot is taken by another booking.
        ToolRetry: The service refused the arguments (e.g. a start outside opening hours).
        BookingUnavailable: The service is down or answered 5xx; the worker retries the call,
            and the idempotency key makes the retry return the first booking, not a second.
    """
    response = _send(ctx, "POST", "/bookings",
                     body={"resource": resource, "start": start, "name": name}, keyed=True)
    if response.status_code in (200, 201):
        return _booking(response)
    if response.status_code == 409:
        detail = _detail(response)
        if detail == "slot taken":
            raise ToolFailed(f"slot taken: {resource} is already booked at {start}")
        raise ToolFailed(detail)
    raise _refused(response)


@tool(effect="sensitive", runner="task", timeout_s=TOOL_TIMEOUT_S)
def confirm_booking(ctx: ToolContext, booking_id: BookingId) -> dict[str, Any]:
    """Confirm a booking made with book_slot. Final: it cannot be taken back.

    Args:
        booking_id: The booking's id, as returned by book_slot.
    """
    response = _send(ctx, "POST", _path(booking_id, "confirm"), keyed=True)
    if response.status_code == 200:
        return _booking(response)
    if response.status_code == 404:
        raise ToolRetry(f"no booking {booking_id!r}")
    if response.status_code == 409:
        raise ToolFailed(_detail(response))
    raise _refused(response)


@tool(effect="safe", runner="task", timeout_s=TOOL_TIMEOUT_S)
def get_booking(ctx: ToolContext, booking_id: BookingId) -> dict[str, Any]:
    """Show a booking: its resource, start, name and status (active, confirmed, cancelled).

    Args:
        booking_id: The booking's id, as returned by book_slot.
    """
    response = _send(ctx, "GET", _path(booking_id))
    if response.status_code == 200:
        return _booking(response)
    if response.status_code == 404:
        raise ToolRetry(f"no booking {booking_id!r}")
    raise _refused(response)


ADAPTER = Adapter(
    name="booking",
    description="A calendar over HTTP: free slots, bookings, confirmation.",
    tools=(find_slots, get_booking, book_slot, confirm_booking),
)

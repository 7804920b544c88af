"""The mail tools and the periodic job that sends scheduled mail when it falls due."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Interval, Row, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from tool_adapters.mail import delivery, schema
from tool_adapters.mail.delivery import MailSettings
from tool_adapters.sdk import Adapter, ToolContext, ToolFailed, ToolRetry, tool

log = logging.getLogger("specgate.tool.mail")

MAX_DELAY_S = 30 * 24 * 3600.0
MAX_BODY_CHARS = 100_000
DELIVERY_BATCH = 50
RETRY_AFTER = timedelta(seconds=60)  # a 4xx ("try later") reply moves the mail this far back
LIST_LIMIT = 100

_T = schema.scheduled


def _check_message(to: str, subject: str, body: str) -> None:
    """Refuse arguments the model can fix, before anything is sent or stored."""
    if not delivery.is_address(to):
        raise ToolRetry(
            f"{to!r} is not an email address; pass one bare address like name@example.com "
            "(no display name, no spaces)"
        )
    if "\r" in subject or "\n" in subject:
        raise ToolRetry("the subject must be a single line")
    if len(body) > MAX_BODY_CHARS:
        raise ToolRetry(f"the body is longer than {MAX_BODY_CHARS} characters")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@tool(effect="sensitive", runner="task", timeout_s=60.0)
def send_email(ctx: ToolContext, to: str, subject: str, body: str) -> dict[str, str]:
    """Send an email now. It cannot be taken back once sent.

    Args:
        to: The recipient's address, e.g. "ann@example.com".
        subject: The subject line.
        body: The text of the message.

    Raises:
        ToolRetry: ``to`` is not an address, or the subject spans several lines.
        ToolFailed: the server refused the message for good (5xx reply, shown to the model).
        OSError: the server could not be reached, dropped the connection or answered "try
            later" (4xx). Left unhandled on purpose so the worker retries the call; the retry
            carries the same Message-ID, so a copy that did get through can be deduplicated.
    """
    _check_message(to, subject, body)
    settings = MailSettings.from_mapping(ctx.settings)
    message = delivery.build_message(settings, ctx.idempotency_key, to, subject, body)
    try:
        delivery.send(settings, message)
    except OSError as error:
        reason = delivery.permanent_refusal(error)
        if reason is None:
            raise
        raise ToolFailed(f"the mail server refused the email to {to}: {reason}") from error
    return {"message_id": str(message["Message-ID"]), "to": to}


def _schedule_id(ctx: ToolContext, result: Any) -> str:
    """The row a finished ``schedule_email`` call made: named in its result, else its key."""
    if isinstance(result, Mapping) and isinstance(result.get("schedule_id"), str):
        return str(result["schedule_id"])
    return ctx.idempotency_key


def unschedule_email(ctx: ToolContext, to: str, subject: str, body: str,
                     delay_s: float = 60.0, *, result: Any) -> dict[str, str]:
    """Compensation of ``schedule_email``: cancel the mail unless it has already gone out.

    Compensation may be retried, so cancelling twice (or a row that was never written) is a
    success. The row lock waits for a ``deliver_due`` that is sending this very mail, so the
    answer is never "cancelled" for a mail that is being sent.
    """
    db = ctx.session
    schedule_id = _schedule_id(ctx, result)
    row = db.execute(
        select(_T.c.status, _T.c.sent_at, _T.c.to_addr)
        .where(_T.c.id == schedule_id, _T.c.tenant == ctx.tenant)
        .with_for_update()
    ).first()
    if row is None:  # nothing was stored, so nothing will be sent
        return {"schedule_id": schedule_id, "status": schema.CANCELLED}
    if row.status == schema.SENT:
        raise ToolFailed(
            f"the email to {row.to_addr} was already sent at {_iso(row.sent_at)}; "
            "it cannot be unsent"
        )
    if row.status == schema.SCHEDULED:
        db.execute(update(_T).where(_T.c.id == schedule_id)
                   .values(status=schema.CANCELLED, cancelled_at=func.clock_timestamp()))
        return {"schedule_id": schedule_id, "status": schema.CANCELLED}
    return {"schedule_id": schedule_id, "status": str(row.status)}  # cancelled or failed


@tool(effect="reversible", runner="task", compensate=unschedule_email, timeout_s=30.0)
def schedule_email(ctx: ToolContext, to: str, subject: str, body: str,
                   delay_s: float = 60.0) -> dict[str, str | None]:
    """Schedule an email to be sent later; it can be cancelled until then.

    Args:
        to: The recipient's address, e.g. "ann@example.com".
        subject: The subject line.
        body: The text of the message.
        delay_s: Seconds from now until it is sent (0 to 30 days).
    """
    _check_message(to, subject, body)
    if not (math.isfinite(delay_s) and 0 <= delay_s <= MAX_DELAY_S):
        raise ToolRetry(f"delay_s must be between 0 and {int(MAX_DELAY_S)} (30 days)")
    db = ctx.session
    key = ctx.idempotency_key
    # send_at comes from the database clock, the same one deliver_due compares it with.
    send_at = func.now() + literal(timedelta(seconds=delay_s), Interval())
    db.execute(
        pg_insert(_T)
        .values(id=key, tenant=ctx.tenant, to_addr=to, subject=subject, body=body,
                send_at=send_at, status=schema.SCHEDULED)
        .on_conflict_do_nothing(index_elements=[_T.c.id])
    )
    row = db.execute(select(_T.c.tenant, _T.c.send_at, _T.c.status).where(_T.c.id == key)).one()
    if row.tenant != ctx.tenant:  # keys are call ids, so this is a bug upstream, not the model's
        raise ToolFailed("this call's key is already used by another tenant's scheduled email")
    return {"schedule_id": key, "send_at": _iso(row.send_at), "status": str(row.status)}


@tool(effect="safe", runner="task")
def list_scheduled(ctx: ToolContext) -> list[dict[str, str | None]]:
    """List the emails that are scheduled and not yet sent, soonest first."""
    rows = ctx.session.execute(
        select(_T.c.id, _T.c.to_addr, _T.c.subject, _T.c.send_at)
        .where(_T.c.tenant == ctx.tenant, _T.c.status == schema.SCHEDULED)
        .order_by(_T.c.send_at, _T.c.id)
        .limit(LIST_LIMIT)
    )
    return [
        {"schedule_id": r.id, "to": r.to_addr, "subject": r.subject, "send_at": _iso(r.send_at)}
        for r in rows
    ]


def _mark(session: Session, schedule_id: str, **values: Any) -> None:
    session.execute(update(_T).where(_T.c.id == schedule_id).values(**values))


def deliver_due(session: Session, settings: Mapping[str, Any]) -> int:
    """Send up to one batch of mail whose time has come; returns how many were sent.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so concurrent workers split the queue
    instead of sending the same mail twice; the claim lasts until the worker commits. SMTP
    errors never escape, since a raise would roll back the "sent" marks of mail already
    accepted and so send it again: an outage ends the batch early, the rest waits for the
    next run.
    """
    rows: list[Row[Any]] = list(session.execute(
        select(_T.c.id, _T.c.to_addr, _T.c.subject, _T.c.body)
        .where(_T.c.status == schema.SCHEDULED, _T.c.send_at <= func.now())
        .order_by(_T.c.send_at, _T.c.id)
        .limit(DELIVERY_BATCH)
        .with_for_update(skip_locked=True)
    ))
    if not rows:
        return 0
    config = MailSettings.from_mapping(settings)
    sent = 0
    try:
        with delivery.connect(config) as client:
            for row in rows:
                message = delivery.build_message(config, row.id, row.to_addr, row.subject,
                                                 row.body)
                try:
                    client.send_message(message)
                except OSError as error:
                    if not delivery.server_answered(error):
                        raise  # the session is gone: stop the batch
                    _defer_or_fail(session, row.id, error)
                    continue
                _mark(session, row.id, status=schema.SENT, sent_at=func.clock_timestamp())
                sent += 1
    except OSError as error:
        log.warning("mail: SMTP unavailable after %d of %d due messages: %r",
                    sent, len(rows), error)
    return sent


def _defer_or_fail(session: Session, schedule_id: str, error: OSError) -> None:
    """A refused message is marked failed (5xx) or tried again a little later (4xx)."""
    reason = delivery.permanent_refusal(error)
    if reason is None:
        log.info("mail: %s deferred by the server: %r", schedule_id, error)
        later = func.clock_timestamp() + literal(RETRY_AFTER, Interval())
        _mark(session, schedule_id, send_at=later)
    else:
        log.warning("mail: %s refused by the server: %s", schedule_id, reason)
        _mark(session, schedule_id, status=schema.FAILED, error=reason)


ADAPTER = Adapter(
    name="mail",
    description="Email over SMTP: send now, or schedule for later and cancel until then.",
    tools=(send_email, schedule_email, list_scheduled),
    metadata=schema.metadata,
    periodic=(deliver_due,),
)

"""The mail adapter against a real SMTP server (in-process aiosmtpd) and a real Postgres.

Tools are called the way the tool worker calls them: ``spec.invoke`` with a context whose
session is committed when the tool returns and rolled back when it raises.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, select, text, update
from sqlalchemy.orm import Session

from tests.support.smtp import LocalSmtp
from tool_adapters.mail import ADAPTER, schema
from tool_adapters.mail.delivery import KEY_HEADER, MailSettings, message_id
from tool_adapters.mail.tools import DELIVERY_BATCH, deliver_due
from tool_adapters.sdk import Effect, Runner, ToolContext, ToolError, ToolFailed, ToolRetry

SEND = ADAPTER.tool("send_email")
SCHEDULE = ADAPTER.tool("schedule_email")
LIST = ADAPTER.tool("list_scheduled")
T = schema.scheduled
SENDER = "assistant@shop.example"


@pytest.fixture(scope="module")
def engine(ledger_url: str) -> Iterator[Engine]:
    engine = create_engine(ledger_url, pool_size=4)
    ADAPTER.metadata.create_all(engine)  # type: ignore[union-attr]
    with engine.begin() as conn:  # deliver_due is global: no leftovers from an earlier run
        conn.execute(delete(T).where(T.c.tenant.like("mailtest-%")))
    yield engine
    engine.dispose()


@pytest.fixture
def smtp() -> Iterator[LocalSmtp]:
    with LocalSmtp() as server:
        yield server


@pytest.fixture
def settings(smtp: LocalSmtp) -> dict[str, Any]:
    return {**smtp.settings, "sender": SENDER}


def _scratch_tenant(engine: Engine) -> Iterator[str]:
    """A fresh tenant whose rows are deleted afterwards."""
    name = f"mailtest-{uuid.uuid4().hex[:8]}"
    yield name
    with engine.begin() as conn:
        conn.execute(delete(T).where(T.c.tenant == name))


@pytest.fixture
def tenant(engine: Engine) -> Iterator[str]:
    yield from _scratch_tenant(engine)


@pytest.fixture
def other_tenant(engine: Engine) -> Iterator[str]:
    yield from _scratch_tenant(engine)


def new_key() -> str:
    return f"call-{uuid.uuid4().hex}"


def make_ctx(tenant: str, key: str, settings: Mapping[str, Any],
             db: Session | None = None) -> ToolContext:
    return ToolContext(call_id=key, idempotency_key=key, tenant=tenant, session_id="s-1",
                       turn_id="turn-1", db=db, settings=settings)


def invoke(engine: Engine, name: str, tenant: str, arguments: Mapping[str, Any],
           settings: Mapping[str, Any], key: str | None = None) -> Any:
    """Run a tool as the worker does: its own session, committed only if the tool returns."""
    with Session(engine) as db, db.begin():
        ctx = make_ctx(tenant, key or new_key(), settings, db)
        return ADAPTER.tool(name).invoke(ctx, arguments)


def compensate(engine: Engine, tenant: str, key: str, arguments: Mapping[str, Any],
               result: Any, settings: Mapping[str, Any]) -> Any:
    with Session(engine) as db, db.begin():
        return SCHEDULE.run_compensate(make_ctx(tenant, key, settings, db), arguments, result)


def run_deliver(engine: Engine, settings: Mapping[str, Any]) -> int:
    with Session(engine) as db, db.begin():
        return deliver_due(db, settings)


def row(engine: Engine, schedule_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(T).where(T.c.id == schedule_id)).one()


def mail(to: str = "ann@example.com", subject: str = "Your order", body: str = "Hello",
         **extra: Any) -> dict[str, Any]:
    return {"to": to, "subject": subject, "body": body, **extra}


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the adapter's declaration ---------------------------------------------------------------


def test_adapter_declares_effects_runners_and_the_periodic_job() -> None:
    effects = {spec.name: (spec.effect, spec.runner) for spec in ADAPTER.tools}
    assert effects == {
        "send_email": (Effect.SENSITIVE, Runner.TASK),
        "schedule_email": (Effect.REVERSIBLE, Runner.TASK),
        "list_scheduled": (Effect.SAFE, Runner.TASK),
    }
    assert ADAPTER.periodic == (deliver_due,)
    assert SCHEDULE.compensate is not None
    assert "OSError" not in SEND.description  # the Raises section is for authors, not the LLM


def test_settings_have_defaults_and_accept_strings() -> None:
    assert MailSettings.from_mapping({}) == MailSettings(
        smtp_host="127.0.0.1", smtp_port=25, sender="specgate@localhost", smtp_timeout_s=10.0)
    assert MailSettings.from_mapping({"smtp_port": "2525"}).smtp_port == 2525
    with pytest.raises(ValueError, match="smtp_port"):
        MailSettings.from_mapping({"smtp_port": 0})
    with pytest.raises(ValueError, match="sender"):
        MailSettings.from_mapping({"sender": "not an address"})


def test_message_id_is_stable_and_always_well_formed() -> None:
    assert message_id("call-1") == "<call-1@specgate>"
    odd = message_id("a key <with> spaces")
    assert odd == message_id("a key <with> spaces")
    assert odd != message_id("another key")
    assert " " not in odd and odd.count("<") == 1 and odd.endswith("@specgate>")


# --- send_email --------------------------------------------------------------------------------


def test_send_email_delivers_one_message_tagged_with_the_key(
        smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    body = "Grüße! Your beans ship tomorrow.\nSee you soon."
    result = SEND.invoke(make_ctx(tenant, key, settings),
                         mail(subject="Order update ☕", body=body))

    assert result == {"message_id": f"<{key}@specgate>", "to": "ann@example.com"}
    [received] = smtp.wait_for(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ("ann@example.com",)
    message = received.message
    assert message["Message-ID"] == f"<{key}@specgate>"
    assert message[KEY_HEADER] == key
    assert message["From"] == SENDER
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Order update ☕"
    assert message["Date"]
    assert message.get_content().rstrip("\n") == body  # type: ignore[attr-defined]
    assert len(smtp.messages) == 1


def test_a_retried_send_carries_the_same_message_id(
        smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    for _ in range(2):  # e.g. the worker died after the server accepted the first copy
        SEND.invoke(make_ctx(tenant, key, settings), mail())
    first, second = smtp.wait_for(2)
    assert first.message["Message-ID"] == second.message["Message-ID"] == f"<{key}@specgate>"


@pytest.mark.parametrize("to", [
    "ann",
    "ann at example dot com",
    "Ann <ann@example.com>",
    "ann@example.com, bob@example.com",
    "ann@@example.com",
    "ann@example.com\nBcc: eve@example.com",
    "",
])
def test_send_email_refuses_what_is_not_one_address(
        smtp: LocalSmtp, settings: dict[str, Any], tenant: str, to: str) -> None:
    with pytest.raises(ToolRetry, match="not an email address"):
        SEND.invoke(make_ctx(tenant, new_key(), settings), mail(to=to))
    assert smtp.messages == []


def test_send_email_refuses_a_multiline_subject(
        smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    with pytest.raises(ToolRetry, match="single line"):
        SEND.invoke(make_ctx(tenant, new_key(), settings),
                    mail(subject="Hi\r\nBcc: eve@example.com"))
    assert smtp.messages == []


def test_a_refused_recipient_is_a_terminal_failure_with_the_reply(
        smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    smtp.refuse = True
    with pytest.raises(ToolFailed, match="550") as caught:
        SEND.invoke(make_ctx(tenant, new_key(), settings), mail(to="gone@example.com"))
    assert "gone@example.com" in caught.value.message
    assert "Mailbox unavailable" in caught.value.message
    assert smtp.messages == []


def test_a_temporary_refusal_propagates_for_the_worker_to_retry(
        smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    smtp.refuse = True
    smtp.refuse_reply = "451 4.3.0 Try again later"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        SEND.invoke(make_ctx(tenant, new_key(), settings), mail())
    assert isinstance(caught.value, OSError) and not isinstance(caught.value, ToolError)


def test_an_unreachable_server_propagates_as_oserror(tenant: str) -> None:
    settings = {"smtp_port": free_port(), "smtp_timeout_s": 2}
    with pytest.raises(OSError) as caught:
        SEND.invoke(make_ctx(tenant, new_key(), settings), mail())
    assert not isinstance(caught.value, ToolError)


# --- schedule_email / unschedule_email ----------------------------------------------------------


def test_schedule_email_is_idempotent_per_key(
        engine: Engine, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    first = invoke(engine, "schedule_email", tenant, mail(delay_s=120), settings, key)
    again = invoke(engine, "schedule_email", tenant, mail(delay_s=120), settings, key)

    assert again == first
    assert first["schedule_id"] == key and first["status"] == "scheduled"
    with engine.connect() as conn:
        rows = conn.execute(select(T).where(T.c.tenant == tenant)).all()
    assert len(rows) == 1
    assert rows[0].send_at - rows[0].created_at == timedelta(seconds=120)
    assert rows[0].send_at.isoformat() == first["send_at"]

    other = invoke(engine, "schedule_email", tenant, mail(delay_s=120), settings)
    assert other["schedule_id"] != key


@pytest.mark.parametrize("delay_s", [-1.0, 30 * 24 * 3600 + 1.0])
def test_schedule_email_bounds_the_delay(
        engine: Engine, settings: dict[str, Any], tenant: str, delay_s: float) -> None:
    with pytest.raises(ToolRetry, match="delay_s"):
        invoke(engine, "schedule_email", tenant, mail(delay_s=delay_s), settings)
    with engine.connect() as conn:
        assert conn.execute(select(T.c.id).where(T.c.tenant == tenant)).first() is None


def test_schedule_email_checks_the_address_before_storing(
        engine: Engine, settings: dict[str, Any], tenant: str) -> None:
    with pytest.raises(ToolRetry, match="not an email address"):
        invoke(engine, "schedule_email", tenant, mail(to="ann"), settings)
    with engine.connect() as conn:
        assert conn.execute(select(T.c.id).where(T.c.tenant == tenant)).first() is None


def test_unschedule_cancels_idempotently_and_nothing_is_sent(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    arguments = mail(delay_s=0)
    result = invoke(engine, "schedule_email", tenant, arguments, settings, key)

    undone = compensate(engine, tenant, key, arguments, result, settings)
    assert undone == {"schedule_id": key, "status": "cancelled"}
    cancelled = row(engine, key)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None

    again = compensate(engine, tenant, key, arguments, result, settings)  # a retried undo
    assert again == {"schedule_id": key, "status": "cancelled"}
    assert row(engine, key).cancelled_at == cancelled.cancelled_at

    assert run_deliver(engine, settings) == 0  # it was due, but it is cancelled
    assert smtp.messages == []


def test_unschedule_of_a_row_never_written_succeeds(
        engine: Engine, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    undone = compensate(engine, tenant, key, mail(), None, settings)
    assert undone == {"schedule_id": key, "status": "cancelled"}


def test_unschedule_fails_once_the_mail_was_sent(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    arguments = mail(delay_s=0)
    result = invoke(engine, "schedule_email", tenant, arguments, settings, key)
    assert run_deliver(engine, settings) == 1

    with pytest.raises(ToolFailed, match="already sent at"):
        compensate(engine, tenant, key, arguments, result, settings)
    assert row(engine, key).status == "sent"


# --- deliver_due ---------------------------------------------------------------------------------


def test_deliver_due_sends_only_due_mail_once_and_marks_it_sent(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    due, later = new_key(), new_key()
    invoke(engine, "schedule_email", tenant,
           mail(to="due@example.com", subject="Now", body="Due body", delay_s=0), settings, due)
    invoke(engine, "schedule_email", tenant, mail(delay_s=3600), settings, later)

    assert run_deliver(engine, settings) == 1
    [received] = smtp.messages
    assert received.rcpt_tos == ("due@example.com",)
    assert received.message["Message-ID"] == f"<{due}@specgate>"
    assert received.message[KEY_HEADER] == due
    assert received.message["Subject"] == "Now"
    assert received.message.get_content().rstrip("\n") == "Due body"  # type: ignore[attr-defined]
    sent = row(engine, due)
    assert sent.status == "sent" and sent.sent_at is not None and sent.sent_at >= sent.send_at
    assert row(engine, later).status == "scheduled"

    assert run_deliver(engine, settings) == 0
    assert len(smtp.messages) == 1


def test_deliver_due_skips_rows_another_worker_holds(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    keys = [new_key() for _ in range(3)]
    for key in keys:
        invoke(engine, "schedule_email", tenant, mail(delay_s=0), settings, key)

    with Session(engine) as first:
        assert deliver_due(first, settings) == 3  # sent, but not yet committed: rows locked
        with Session(engine) as second, second.begin():
            # A regression to plain FOR UPDATE would wait here: fail fast instead of hanging.
            second.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert deliver_due(second, settings) == 0
        first.commit()

    assert run_deliver(engine, settings) == 0
    assert sorted(m.message["Message-ID"] for m in smtp.messages) == sorted(
        f"<{key}@specgate>" for key in keys)


def test_concurrent_deliver_due_never_sends_a_mail_twice(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    total = DELIVERY_BATCH + 10
    keys = [new_key() for _ in range(total)]
    for key in keys:
        invoke(engine, "schedule_email", tenant, mail(delay_s=0), settings, key)
    smtp.delay_s = 0.005  # keeps each batch's locks held long enough for the other to meet them
    start = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            counts.append(run_deliver(engine, settings))
        except BaseException as error:  # surfaced by the asserts below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    # Each claims at most a batch and together they claim every row exactly once. How the rows
    # split depends on timing: two scans that run at once interleave their locks (48/12 is as
    # right as 50/10).
    assert len(counts) == 2 and sum(counts) == total
    assert all(0 < count <= DELIVERY_BATCH for count in counts)
    ids = [m.message["Message-ID"] for m in smtp.messages]
    assert len(ids) == total
    assert sorted(ids) == sorted(f"<{key}@specgate>" for key in keys)
    with engine.connect() as conn:
        statuses = conn.execute(select(T.c.status).where(T.c.tenant == tenant)).scalars().all()
    assert statuses == ["sent"] * total


def test_deliver_due_marks_a_refused_mail_failed_and_does_not_retry_it(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    invoke(engine, "schedule_email", tenant, mail(delay_s=0), settings, key)
    smtp.refuse = True

    assert run_deliver(engine, settings) == 0
    failed = row(engine, key)
    assert failed.status == "failed" and "550" in failed.error

    smtp.refuse = False
    assert run_deliver(engine, settings) == 0
    assert smtp.messages == []


def test_deliver_due_defers_a_temporarily_refused_mail(
        engine: Engine, smtp: LocalSmtp, settings: dict[str, Any], tenant: str) -> None:
    key = new_key()
    invoke(engine, "schedule_email", tenant, mail(delay_s=0), settings, key)
    smtp.refuse, smtp.refuse_reply = True, "450 4.2.0 Mailbox busy"

    assert run_deliver(engine, settings) == 0
    deferred = row(engine, key)
    assert deferred.status == "scheduled"
    assert deferred.send_at - deferred.created_at > timedelta(seconds=30)

    smtp.refuse = False
    with engine.begin() as conn:  # time passes
        conn.execute(update(T).where(T.c.id == key).values(send_at=deferred.created_at))
    assert run_deliver(engine, settings) == 1
    assert len(smtp.wait_for(1)) == 1


def test_deliver_due_leaves_mail_queued_while_the_server_is_down(
        engine: Engine, tenant: str) -> None:
    key = new_key()
    settings = {"smtp_port": free_port(), "smtp_timeout_s": 2}
    invoke(engine, "schedule_email", tenant, mail(delay_s=0), settings, key)

    assert run_deliver(engine, settings) == 0  # logged, not raised: the job runs again soon
    assert row(engine, key).status == "scheduled"


# --- list_scheduled ------------------------------------------------------------------------------


def test_list_scheduled_shows_only_the_tenants_pending_mail(
        engine: Engine, settings: dict[str, Any], tenant: str, other_tenant: str) -> None:
    soon, later, cancelled = new_key(), new_key(), new_key()
    invoke(engine, "schedule_email", tenant, mail(subject="later", delay_s=600), settings, later)
    invoke(engine, "schedule_email", tenant, mail(subject="soon", delay_s=60), settings, soon)
    result = invoke(engine, "schedule_email", tenant, mail(subject="gone"), settings, cancelled)
    compensate(engine, tenant, cancelled, mail(), result, settings)
    invoke(engine, "schedule_email", other_tenant, mail(subject="theirs"), settings)

    mine = invoke(engine, "list_scheduled", tenant, {}, settings)
    assert [(m["schedule_id"], m["subject"]) for m in mine] == [(soon, "soon"), (later, "later")]
    assert mine[0]["to"] == "ann@example.com" and mine[0]["send_at"]
    theirs = invoke(engine, "list_scheduled", other_tenant, {}, settings)
    assert [m["subject"] for m in theirs] == ["theirs"]

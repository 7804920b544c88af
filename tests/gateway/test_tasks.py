"""The ``task`` runner end to end: the in-process gateway, a real ``specgate worker`` child
process, the embedded broker (the ledger's Postgres), a real SMTP server and a real HTTP booking
service on localhost.

What must hold (docs/architecture.md#invariants): a sensitive mail is never sent before commit
(I5) and exactly once after it (I2), also across a SIGKILLed worker and a broker that is down at
commit; a dropped reversible effect is compensated exactly once (I3), also when the cancel races
the task; a compensation that keeps failing ends ``compensation_failed`` with its error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.app import create_app
from gateway.children import LocalWorker, settings_env
from gateway.config import Settings
from gateway.migrate import setup_adapters
from lab.proxy import CuttableProxy
from tests.gateway.helpers import Api, expire_approval, new_keys
from tests.support.booking_service import LocalBookingService
from tests.support.smtp import LocalSmtp

APPROVALS = "approvals-tenant"  # its policy puts mail.send_email under approval


def task_settings(pg_home: Path, ledger_url: str, smtp: LocalSmtp, booking: LocalBookingService,
                  **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": pg_home, "database_url": ledger_url, "adapters": ["demo", "mail", "booking"],
        "adapter_settings": {"mail": smtp.settings, "booking": {"base_url": booking.url}},
        "relay_period_s": 0.2, "relay_grace_s": 0.5, "relay_max_backoff_s": 1.0,
        "task_retry_base_s": 0.05, "task_max_attempts": 3, "settle_wait_s": 15.0,
        "approval_policy": {APPROVALS: ["mail.send_email", "class:sensitive"]},
        **overrides,
    }
    return Settings(**values)


@dataclass
class TaskWorld:
    api: Api
    smtp: LocalSmtp
    booking: LocalBookingService
    settings: Settings
    worker: LocalWorker
    ledger_url: str

    def call(self, sid: str, cid: str, tool: str, arguments: dict[str, Any],
             wait: float = 0) -> dict[str, Any]:
        return self.api.call(sid, cid, tool, arguments=arguments, wait=wait)

    def status(self, call_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get(f"/v1/calls/{call_id}").json()
        return result

    def until(self, call_id: str, statuses: set[str], timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            call = self.status(call_id)
            if call["status"] in statuses and self.pending(call_id) == 0:
                return call
            assert time.monotonic() < deadline, f"call stuck in {call['status']}: {call}"
            time.sleep(0.05)

    def pending(self, call_id: str) -> int:
        """The call's outbox rows that are not done."""
        with self.api.client.app.state.runtime.dbs.ledger.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM outbox WHERE call_id = :c AND "
                                         "done_at IS NULL"), {"c": call_id}).scalar())

    def restart_worker(self, env: dict[str, str] | None = None) -> None:
        self.worker.kill()
        self.worker = LocalWorker(env=env or self.worker.env,
                                  log_path=self.worker.log_path).start()


@contextmanager
def _world(pg_home: Path, ledger_url: str, settings: Settings,
           ) -> Iterator[tuple[LocalWorker, Api]]:
    """A worker child process and an in-process gateway on ``settings``, with an app key."""
    setup_adapters(settings)
    worker = LocalWorker(env=settings_env(settings, ledger_url),
                         log_path=pg_home / f"worker-{uuid.uuid4().hex[:6]}.log").start()
    app = create_app(settings, gateway_id=f"test-{uuid.uuid4().hex[:6]}", background=False)
    client = TestClient(app)
    client.__enter__()
    try:
        yield worker, Api(client, _new_key(ledger_url))
    finally:
        client.__exit__(None, None, None)
        worker.stop()


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[LocalSmtp, LocalBookingService]]:
    with LocalSmtp() as smtp, LocalBookingService() as booking:
        yield smtp, booking


@pytest.fixture(scope="module")
def module_world(pg_home: Path, ledger_url: str,
                 services: tuple[LocalSmtp, LocalBookingService]) -> Iterator[TaskWorld]:
    smtp, booking = services
    settings = task_settings(pg_home, ledger_url, smtp, booking)
    with _world(pg_home, ledger_url, settings) as (worker, api):
        world = TaskWorld(api, smtp, booking, settings, worker, ledger_url)
        yield world
        world.worker.stop()  # a test may have replaced the first one


@pytest.fixture
def world(module_world: TaskWorld) -> TaskWorld:
    module_world.smtp.clear()
    module_world.smtp.delay_s = 0.0
    module_world.booking.reset()
    module_world.api = Api(module_world.api.client, _new_key(module_world.ledger_url))
    return module_world


def _new_key(ledger_url: str, tenant: str | None = None, role: str = "app") -> str:
    (key,) = new_keys(ledger_url, tenant or f"t-{uuid.uuid4().hex[:8]}", role)
    return key


def _active_bookings(booking: LocalBookingService) -> int:
    import httpx

    found = httpx.get(f"{booking.url}/bookings").json()
    return sum(1 for b in found if b["status"] == "active")


def _deletes(booking: LocalBookingService) -> int:
    return sum(1 for r in booking.requests() if r["method"] == "DELETE")


SLOT = {"resource": "room-1", "start": "2026-12-01T10:00", "name": "ann"}


def test_safe_task_call_runs_in_the_worker(world: TaskWorld) -> None:
    sid, _ = world.api.session()
    call = world.call(sid, "1", "booking.find_slots", {"resource": "room-1",
                                                        "day": "2026-12-01"}, wait=20)
    assert call["status"] == "succeeded", call
    assert "2026-12-01T09:00" in call["result"] and len(call["result"]) == 8


def test_reversible_task_call_is_held_then_committed(world: TaskWorld) -> None:
    sid, tid = world.api.session()
    call = world.call(sid, "1", "booking.book_slot", SLOT, wait=20)
    assert call["status"] == "held", call
    assert _active_bookings(world.booking) == 1
    turn = world.api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}, expect=200).json()
    assert [c["status"] for c in turn["calls"]] == ["committed"]
    time.sleep(1.0)  # several relay periods: nothing may undo a committed effect
    assert _active_bookings(world.booking) == 1 and _deletes(world.booking) == 0


def test_cancelled_reversible_task_call_is_compensated_once(world: TaskWorld) -> None:
    sid, _ = world.api.session()
    call = world.call(sid, "1", "booking.book_slot", SLOT, wait=20)
    changed = world.api.post(f"/v1/calls/{call['id']}/cancel", {}, expect=200).json()
    assert [c["status"] for c in changed] == ["compensating"]
    done = world.until(call["id"], {"compensated"})
    assert done["status"] == "compensated"
    time.sleep(1.0)
    assert _active_bookings(world.booking) == 0 and _deletes(world.booking) == 1


def test_cancelled_turn_compensates_every_held_task_call(world: TaskWorld) -> None:
    sid, tid = world.api.session()
    first = world.call(sid, "1", "booking.book_slot", SLOT, wait=20)
    second = world.call(sid, "2", "booking.book_slot", {**SLOT, "start": "2026-12-01T11:00"},
                        wait=20)
    assert _active_bookings(world.booking) == 2
    world.api.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}, expect=200)
    for call in (first, second):
        assert world.until(call["id"], {"compensated"})["status"] == "compensated"
    assert _active_bookings(world.booking) == 0 and _deletes(world.booking) == 2


def test_cancel_racing_the_task_leaves_no_effect_and_one_compensation_each(
        world: TaskWorld) -> None:
    sid, _ = world.api.session()
    ids = []
    for n in range(6):
        call = world.call(sid, f"r{n}", "booking.book_slot",
                          {**SLOT, "start": f"2026-12-02T{9 + n:02d}:00"})
        if n % 2:
            time.sleep(0.02 * n)  # let some of them start before the cancel
        world.api.post(f"/v1/calls/{call['id']}/cancel", {}, expect=200)
        ids.append(call["id"])
    finals = [world.until(i, {"cancelled", "compensated"})["status"] for i in ids]
    created = sum(1 for r in world.booking.requests()
                  if r["method"] == "POST" and r["status"] in (200, 201))
    assert _active_bookings(world.booking) == 0
    assert _deletes(world.booking) == finals.count("compensated") == created


def test_compensation_that_keeps_failing_ends_failed_with_its_error(world: TaskWorld) -> None:
    sid, _ = world.api.session()
    call = world.call(sid, "1", "booking.book_slot", SLOT, wait=20)
    world.booking.fail("DELETE", times=100, status=503)
    world.api.post(f"/v1/calls/{call['id']}/cancel", {}, expect=200)
    done = world.until(call["id"], {"compensation_failed"})
    assert "503" in done["error"]["message"] or "unavailable" in done["error"]["message"].lower()
    assert _deletes(world.booking) == world.settings.task_max_attempts
    assert _active_bookings(world.booking) == 1  # left for an operator, not lost


MAIL = {"to": "ann@example.com", "subject": "Your order", "body": "It ships today."}


def test_sensitive_mail_is_sent_only_after_commit_and_once(world: TaskWorld) -> None:
    sid, tid = world.api.session()
    call = world.call(sid, "1", "mail.send_email", MAIL)
    assert call["status"] == "staged"
    time.sleep(1.0)  # five relay periods
    assert world.smtp.messages == []
    world.api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}, expect=200)
    (message,) = world.smtp.wait_for(1, timeout_s=20)
    assert message.message["Subject"] == "Your order"
    assert world.until(call["id"], {"succeeded"})["result"]["message_id"]
    time.sleep(1.0)
    assert len(world.smtp.messages) == 1


def test_mail_of_a_cancelled_turn_is_never_sent(world: TaskWorld) -> None:
    sid, tid = world.api.session()
    call = world.call(sid, "1", "mail.send_email", MAIL)
    world.api.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}, expect=200)
    time.sleep(1.5)
    assert world.smtp.messages == []
    assert world.status(call["id"])["status"] == "cancelled"


def test_mail_is_sent_once_when_the_worker_is_killed_mid_send(world: TaskWorld) -> None:
    world.smtp.delay_s = 30.0  # the server sits on DATA: the worker is inside the tool
    sid, tid = world.api.session()
    call = world.call(sid, "1", "mail.send_email", MAIL)
    world.api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}, expect=200)
    deadline = time.monotonic() + 20
    while world.status(call["id"])["status"] != "dispatched":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    world.worker.kill()
    world.smtp.delay_s = 0.0
    assert world.smtp.messages == []
    world.restart_worker()
    world.smtp.wait_for(1, timeout_s=30)
    assert world.until(call["id"], {"succeeded"})["status"] == "succeeded"
    time.sleep(1.0)
    assert len(world.smtp.messages) == 1


def _socket_target(ledger_url: str) -> tuple[str, int] | Path:
    url = make_url(ledger_url)
    host = url.query.get("host")
    if isinstance(host, str) and host.startswith("/"):
        return next(Path(host).glob(".s.PGSQL.*"))
    return (url.host or "127.0.0.1", url.port or 5432)


def test_broker_down_at_commit_keeps_the_decision_and_sends_once_back(
        pg_home: Path, ledger_url: str, world: TaskWorld) -> None:
    smtp, booking = world.smtp, world.booking
    # Every worker serves the one outbox: the other worker (on the direct broker) must not
    # relay this call while the broker of this test is down.
    world.worker.stop()
    try:
        _broker_down_at_commit(pg_home, ledger_url, smtp, booking)
    finally:
        world.restart_worker()


def _broker_down_at_commit(pg_home: Path, ledger_url: str, smtp: LocalSmtp,
                           booking: LocalBookingService) -> None:
    with CuttableProxy(_socket_target(ledger_url)) as proxy:
        url = make_url(ledger_url)
        broker = (f"specgate-sql+postgresql+psycopg://{url.username or 'postgres'}@127.0.0.1:"
                  f"{proxy.port}/{url.database}")
        settings = task_settings(pg_home, ledger_url, smtp, booking, broker_url=broker)
        with _world(pg_home, ledger_url, settings) as (_worker, api):
            sid, tid = api.session()
            call = api.call(sid, "1", "mail.send_email", arguments=MAIL)
            proxy.down()
            turn = api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}, expect=200).json()
            assert turn["status"] == "committed"
            time.sleep(2.0)
            assert smtp.messages == []
            proxy.up()
            smtp.wait_for(1, timeout_s=60)
            time.sleep(1.5)
            assert len(smtp.messages) == 1
            final = api.get(f"/v1/calls/{call['id']}").json()
            assert final["status"] == "succeeded"


def _awaiting(world: TaskWorld, arguments: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A mail of the approvals tenant, staged, its turn committed: (call, confirm token)."""
    sid, tid = world.api.session()
    staged = world.call(sid, "1", "mail.send_email", arguments)
    assert staged["status"] == "staged" and staged["requires_approval"]
    token = staged["confirm_token"]
    assert token.startswith("sgc_")
    turn = world.api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}, expect=200).json()
    assert [c["status"] for c in turn["calls"]] == ["awaiting_approval"]
    assert world.status(staged["id"])["confirm_token"] is None  # shown once, never again
    return staged, token


@pytest.fixture
def approver(world: TaskWorld) -> TaskWorld:
    world.api = Api(world.api.client, _new_key(world.ledger_url, APPROVALS))
    return world


def test_confirm_token_approves_once(approver: TaskWorld) -> None:
    world = approver
    call, token = _awaiting(world, MAIL)
    time.sleep(1.0)
    assert world.smtp.messages == []  # committed, but not approved: nothing sent (I5)
    refused = world.api.post(f"/v1/calls/{call['id']}/approve", {}, expect=403).json()
    assert refused["error"]["code"] == "confirm_token_required"
    wrong = world.api.post(f"/v1/calls/{call['id']}/approve", {"confirm_token": "sgc_nope"},
                           expect=403).json()
    assert wrong["error"]["code"] == "invalid_confirm_token"
    approved = world.api.post(f"/v1/calls/{call['id']}/approve", {"confirm_token": token},
                              expect=200).json()
    assert approved["status"] == "approved"
    world.smtp.wait_for(1, timeout_s=20)
    assert world.until(call["id"], {"succeeded"})["status"] == "succeeded"
    again = world.api.post(f"/v1/calls/{call['id']}/approve", {"confirm_token": token},
                           expect=409).json()
    assert again["error"]["code"] == "not_awaiting_approval"
    time.sleep(0.5)
    assert len(world.smtp.messages) == 1


def test_confirm_token_is_bound_to_its_call_and_arguments(approver: TaskWorld) -> None:
    world = approver
    first, token = _awaiting(world, MAIL)
    other, _ = _awaiting(world, {**MAIL, "to": "bob@example.com"})
    refused = world.api.post(f"/v1/calls/{other['id']}/approve", {"confirm_token": token},
                             expect=403).json()
    assert refused["error"]["code"] == "invalid_confirm_token"
    assert world.status(other["id"])["status"] == "awaiting_approval"
    assert world.status(first["id"])["status"] == "awaiting_approval"


def test_expired_approval_is_refused_then_denied_by_the_reaper(approver: TaskWorld) -> None:
    from gateway.calls.approvals import deny_expired

    world = approver
    call, token = _awaiting(world, MAIL)
    expire_approval(world.ledger_url, call["id"])
    late = world.api.post(f"/v1/calls/{call['id']}/approve", {"confirm_token": token},
                          expect=409).json()
    assert late["error"]["code"] == "approval_expired"
    assert deny_expired(world.api.client.app.state.runtime) >= 1
    assert world.status(call["id"])["status"] == "denied"
    time.sleep(1.0)
    assert world.smtp.messages == []


def test_admin_deny_leaves_no_effect(approver: TaskWorld) -> None:
    world = approver
    call, _ = _awaiting(world, MAIL)
    admin = Api(world.api.client, _new_key(world.ledger_url, APPROVALS, "admin"))
    denied = admin.post(f"/v1/calls/{call['id']}/deny", {"reason": "customer changed mind"},
                        expect=200).json()
    assert denied["status"] == "denied"
    time.sleep(1.0)
    assert world.smtp.messages == [] and world.pending(call["id"]) == 0


def test_other_tenant_cannot_approve(approver: TaskWorld) -> None:
    world = approver
    call, token = _awaiting(world, MAIL)
    stranger = Api(world.api.client, _new_key(world.ledger_url, None, "admin"))
    stranger.post(f"/v1/calls/{call['id']}/approve", {"confirm_token": token}, expect=404)
    assert world.status(call["id"])["status"] == "awaiting_approval"

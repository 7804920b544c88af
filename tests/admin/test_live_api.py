"""The operator API against real processes: the tenant-wide event stream of a gateway child
process, and retrying a failed compensation with a real tool worker and booking service."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.children import LocalWorker, settings_env
from gateway.migrate import setup_adapters
from lab.servers import LocalGateway
from tests.admin.conftest import Tenant, audit_details, new_tenant
from tests.support.booking_service import LocalBookingService
from tests.support.smtp import LocalSmtp


def _events(gateway: LocalGateway, key: str, found: list[dict[str, Any]], stop: threading.Event,
            path: str = "/v1/admin/events", last_id: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    with httpx.Client(base_url=gateway.url, timeout=30) as client, \
            client.stream("GET", path, headers=headers) as response:
        kind, ident = None, None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("id:"):
                ident = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                found.append({"kind": kind, "id": ident,
                              **orjson.loads(line.split(":", 1)[1])})
            if stop.is_set():
                return


def _until(check: Any, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_admin_stream_carries_the_tenants_events_only_and_resumes(
        live_gateway: LocalGateway, acme: Tenant, other: Tenant) -> None:
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(live_gateway, acme.admin.key, seen, stop),
                              daemon=True)
    reader.start()
    _until(lambda: any(e["kind"] == "ready" for e in seen))
    theirs = other.held_call("Pia")
    mine = acme.held_call("Quin")
    acme.app.post(f"/v1/sessions/{mine['session']}/transcript", {"text": "hello"}, expect=201)
    _until(lambda: any(e["kind"] == "transcript" for e in seen)
           and any(e.get("to") == "held" for e in seen))
    stop.set()
    calls = [e for e in seen if e["kind"] == "call"]
    assert [e["to"] for e in calls] == ["proposed", "running", "held"]
    assert {e["session_id"] for e in seen if e["kind"] != "ready"} == {mine["session"]}
    assert all(theirs["session"] not in orjson.dumps(e).decode() for e in seen)
    # Resuming from the first call event replays what came after it, and nothing before.
    again: list[dict[str, Any]] = []
    stop2 = threading.Event()
    threading.Thread(target=_events, daemon=True, args=(
        live_gateway, acme.admin.key, again, stop2, "/v1/admin/events", calls[0]["id"])).start()
    _until(lambda: sum(1 for e in again if e["kind"] in ("call", "transcript")) >= 3)
    stop2.set()
    assert [e.get("to") for e in again if e["kind"] == "call"][:2] == ["running", "held"]
    response = httpx.get(f"{live_gateway.url}/v1/admin/events",
                         headers={"Authorization": f"Bearer {acme.app.key}"})
    assert response.status_code == 403


@pytest.fixture
def booking_world(pg_home: Path, ledger_url: str) -> Iterator[tuple[Tenant,
                                                                    LocalBookingService]]:
    """An in-process gateway and a real tool worker with the booking adapter on a real HTTP
    booking service (as in tests/gateway/test_tasks.py)."""
    from gateway.config import Settings

    with LocalSmtp() as smtp, LocalBookingService() as booking:
        settings = Settings(
            home=pg_home, database_url=ledger_url, adapters=["demo", "mail", "booking"],
            adapter_settings={"mail": smtp.settings, "booking": {"base_url": booking.url}},
            relay_period_s=0.2, relay_grace_s=0.5, relay_max_backoff_s=1.0,
            task_retry_base_s=0.05, task_max_attempts=2, settle_wait_s=15.0,
            # the app below runs without its background loop, so nothing renews its session
            # leases: one lapsing during a slow call (a loaded machine) would let a
            # reconciler abort the turn under the test
            owner_lease_s=300.0)
        setup_adapters(settings)
        worker = LocalWorker(env=settings_env(settings, ledger_url),
                             log_path=pg_home / f"admin-worker-{uuid.uuid4().hex[:6]}.log")
        worker.start()
        app = create_app(settings, gateway_id=f"test-{uuid.uuid4().hex[:6]}", background=False)
        try:
            with TestClient(app) as client:
                yield new_tenant(ledger_url, client), booking
        finally:
            worker.stop()


def test_retry_of_a_failed_compensation_undoes_the_effect(
        booking_world: tuple[Tenant, LocalBookingService], ledger_url: str) -> None:
    tenant, booking = booking_world
    sid, _ = tenant.app.session()
    slot = {"resource": "room-9", "start": "2026-12-03T10:00", "name": "ann"}
    call = tenant.app.post(f"/v1/sessions/{sid}/calls?wait=20", {
        "tool": "booking.book_slot", "client_call_id": "1", "arguments": slot}, expect=201).json()
    assert call["status"] == "held"
    booking.fail("DELETE", times=2, status=503)
    tenant.app.post(f"/v1/calls/{call['id']}/cancel", {}, expect=200)

    def status() -> str:
        return str(tenant.app.get(f"/v1/calls/{call['id']}").json()["status"])

    _until(lambda: status() == "compensation_failed", 30)
    row = {i["id"]: i for i in tenant.admin.get("/v1/admin/queue").json()["items"]}[call["id"]]
    assert row["actions"] == ["retry_compensation"] and row["holder"]["kind"] == "operator"
    tenant.app.post(f"/v1/admin/calls/{call['id']}/retry-compensation", {}, expect=403)
    retried = tenant.admin.post(f"/v1/admin/calls/{call['id']}/retry-compensation", {},
                                expect=200).json()
    assert retried["status"] == "compensating"
    tenant.admin.post(f"/v1/admin/calls/{call['id']}/retry-compensation", {}, expect=409)
    _until(lambda: status() == "compensated", 30)
    bookings = httpx.get(f"{booking.url}/bookings").json()
    assert not any(b["status"] == "active" for b in bookings)
    moves = [(e["from"], e["to"]) for e in audit_details(ledger_url, call["id"])]
    assert moves[-3:] == [("compensating", "compensation_failed"),
                          ("compensation_failed", "compensating"),
                          ("compensating", "compensated")]
    retry = audit_details(ledger_url, call["id"])[-2]["detail"]
    assert retry["action"] == "retry_compensation" and retry["by"] == "admin"
    assert tenant.admin.get("/v1/admin/audit/verify").json()["ok"]

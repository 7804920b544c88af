"""The dashboard in a real browser: Debian's headless Chromium (through Playwright) against a
real gateway process on the test database. Every assertion is on what the page shows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lab.browser import LAPTOP, PHONE, chromium_path, launch
from lab.servers import LocalGateway
from tests.admin.conftest import Tenant, audit_details, expire_turn_in

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
if chromium_path() is None:  # pragma: no cover - the project's setup installs it
    pytest.fail("Debian's chromium is not installed (apt-get install chromium chromium-driver)",
                pytrace=False)

LIVE_S = 15_000  # ms: how long the page may take to show what just happened


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=LAPTOP)
    tab = context.new_page()
    tab.set_default_timeout(LIVE_S)
    yield tab
    context.close()


def sign_in(page: Any, gateway: LocalGateway, key: str, path: str = "/admin") -> None:
    page.goto(gateway.url + path)
    page.fill("#api-key", key)
    page.click("#login-form button[type=submit]")


def signed_in(page: Any, gateway: LocalGateway, tenant: Tenant, path: str = "/admin") -> None:
    sign_in(page, gateway, tenant.admin.key)
    expect(page.locator("#who-tenant")).to_have_text(f"tenant {tenant.name}")
    if path != "/admin":
        page.goto(gateway.url + path)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")


def row(page: Any, call_id: str) -> Any:
    return page.locator(f'table.queue tr[data-call="{call_id}"]')


def confirm(page: Any, title: str, reason: str | None = None) -> None:
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text(title)
    if reason is not None:
        page.fill("#confirm-reason", reason)
    page.click("#confirm-yes")
    expect(dialog).to_be_hidden()


def test_an_app_key_is_refused_and_an_admin_key_signs_in(
        page: Any, live_gateway: LocalGateway, acme: Tenant) -> None:
    sign_in(page, live_gateway, acme.app.key)
    expect(page.locator("#login-error")).to_contain_text("not an admin key")
    expect(page.locator("#app")).to_be_hidden()
    sign_in(page, live_gateway, "sgk_not-a-real-key")
    expect(page.locator("#login-error")).to_contain_text("Unknown or revoked key")
    sign_in(page, live_gateway, acme.admin.key)
    expect(page.locator("#who-tenant")).to_have_text(f"tenant {acme.name}")
    expect(page.locator("#queue")).to_contain_text("Nothing pending")
    page.click("#sign-out")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()


def test_a_pending_call_appears_live_when_a_session_issues_it(
        page: Any, live_gateway: LocalGateway, acme: Tenant) -> None:
    signed_in(page, live_gateway, acme)
    expect(page.locator("#queue")).to_contain_text("Nothing pending")
    page.evaluate("window.__sameDocument = true")
    held = acme.held_call("Gus")
    line = row(page, held["call"])
    expect(line).to_be_visible()
    expect(line).to_contain_text("held")
    expect(line).to_contain_text("demo.create_order")
    expect(line).to_contain_text("reversible")
    expect(line).to_contain_text("Turn transaction")
    expect(line).to_contain_text("Gus")
    expect(line.locator("time.ttl")).to_contain_text("left")
    expect(page.locator(".summary .total")).to_contain_text("1 pending")
    assert page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded


def test_approve_a_call_waiting_for_approval(
        page: Any, live_gateway: LocalGateway, acme: Tenant, ledger_url: str) -> None:
    waiting = acme.pending_order()
    signed_in(page, live_gateway, acme)
    line = row(page, waiting["call"])
    expect(line).to_contain_text("awaiting approval")
    expect(line).to_contain_text("Prepared transaction")
    expect(line.locator("time.ttl")).to_contain_text("left")
    line.get_by_role("button", name="Approve").click()
    confirm(page, "Approve call", reason="checked with the customer")
    expect(line).to_have_count(0)
    expect(page.locator("#toast")).to_contain_text("Approve: done")
    call = acme.app.get(f"/v1/calls/{waiting['call']}").json()
    assert call["status"] == "succeeded"
    approved = [e for e in audit_details(ledger_url, waiting["call"]) if e["to"] == "approved"]
    assert approved[0]["detail"] == {"by": "admin", "reason": "checked with the customer"}


def test_deny_asks_for_a_reason(page: Any, live_gateway: LocalGateway, acme: Tenant) -> None:
    waiting = acme.pending_order()
    signed_in(page, live_gateway, acme)
    line = row(page, waiting["call"])
    line.get_by_role("button", name="Deny").click()
    page.click("#confirm-yes")
    expect(page.locator("#confirm-error")).to_contain_text("Give a reason")
    confirm(page, "Deny call", reason="card reported stolen")
    expect(line).to_have_count(0)
    assert acme.app.get(f"/v1/calls/{waiting['call']}").json()["status"] == "denied"


def test_cancel_a_held_call(page: Any, live_gateway: LocalGateway, acme: Tenant,
                            ledger_url: str) -> None:
    held = acme.held_call("Hal")
    keep = acme.held_call("Ida")
    signed_in(page, live_gateway, acme)
    line = row(page, held["call"])
    line.get_by_role("button", name="Cancel call").click()
    confirm(page, "Cancel call", reason="wrong customer")
    expect(line).to_have_count(0)
    expect(row(page, keep["call"])).to_be_visible()
    assert acme.app.get(f"/v1/calls/{held['call']}").json()["status"] == "cancelled"
    cancelled = [e for e in audit_details(ledger_url, held["call"]) if e["to"] == "cancelled"]
    assert cancelled[0]["detail"]["reason"] == "operator: wrong customer"


def test_the_timeline_updates_live(page: Any, live_gateway: LocalGateway,
                                   acme: Tenant) -> None:
    sid, tid = acme.app.session()
    signed_in(page, live_gateway, acme, f"/admin/sessions/{sid}")
    expect(page.locator("#transcript-title")).to_be_visible()
    expect(page.locator("svg.chart")).to_contain_text("no transcript yet")
    say = f"/v1/sessions/{sid}/transcript"
    acme.app.post(say, {"text": "I'd like two bags"}, expect=201)
    first = acme.app.call(sid, "1", "create_order", arguments={"customer": "Jo"})
    expect(page.locator(".transcript")).to_contain_text("I'd like two bags")
    expect(page.locator(f'g.lane[data-call="{first["id"]}"]')).to_have_attribute(
        "data-status", "held")
    acme.app.post(say, {"text": "no, for Joe", "final": True}, expect=201)
    second = acme.app.call(sid, "1", "create_order", supersedes="1",
                           arguments={"customer": "Joe"})
    expect(page.locator(f'g.lane[data-call="{first["id"]}"]')).to_have_attribute(
        "data-status", "cancelled")
    expect(page.locator("table.events")).to_contain_text("amended away")
    acme.app.commit(sid, tid)
    expect(page.locator(f'g.lane[data-call="{second["id"]}"]')).to_have_attribute(
        "data-status", "committed")
    expect(page.locator(f'li.turn[data-turn="{tid}"]')).to_contain_text("committed")
    expect(page.locator("#timeline-summary")).to_contain_text("2 calls")
    expect(page.locator("#timeline-summary")).to_contain_text("1 kept, 1 dropped")
    expect(page.locator(".transcript li.final")).to_contain_text("no, for Joe")


def test_extend_a_turn_from_its_session(page: Any, live_gateway: LocalGateway, acme: Tenant,
                                         ledger_url: str) -> None:
    held = acme.held_call("Kim")
    expire_turn_in(ledger_url, held["turn"], seconds=30)
    signed_in(page, live_gateway, acme, f"/admin/sessions/{held['session']}")
    turn = page.locator(f'li.turn[data-turn="{held["turn"]}"]')
    expect(turn.locator("time.ttl")).to_have_class("ttl low")  # under a minute left
    turn.get_by_role("button", name="Extend turn").click()
    page.fill("#confirm-seconds", "120")
    confirm(page, "Extend turn TTL")
    expect(page.locator("#toast")).to_contain_text("Extend: done")
    expect(turn.locator("time.ttl")).to_contain_text("m ")  # minutes left now
    expect(turn.locator("time.ttl")).not_to_have_class("ttl low")
    turn.get_by_role("button", name="Extend turn").click()
    acme.app.commit(held["session"], held["turn"])  # the turn ends while the dialog is open
    page.click("#confirm-yes")
    expect(page.locator("#confirm-error")).to_contain_text("turn_not_open")
    page.click("#confirm-no")
    expect(turn).to_contain_text("committed")


def test_force_commit_a_turn_from_its_session(page: Any, live_gateway: LocalGateway,
                                              acme: Tenant) -> None:
    held = acme.held_call("Lee")
    signed_in(page, live_gateway, acme, f"/admin/sessions/{held['session']}")
    turn = page.locator(f'li.turn[data-turn="{held["turn"]}"]')
    turn.get_by_role("button", name="Commit turn").click()
    confirm(page, "Force-commit turn")
    expect(turn).to_contain_text("committed")
    expect(page.locator(f'g.lane[data-call="{held["call"]}"]')).to_have_attribute(
        "data-status", "committed")
    assert acme.app.get(f"/v1/calls/{held['call']}").json()["status"] == "committed"


def test_filters_and_search(page: Any, live_gateway: LocalGateway, acme: Tenant) -> None:
    held = acme.held_call("Lu")
    sid = held["session"]
    acme.app.call(sid, "2", "get_order", depends_on=["1"],
                  arguments={"order_id": "$1.order_id"})
    waiting = acme.pending_order()
    signed_in(page, live_gateway, acme)
    expect(page.locator("table.queue tbody tr[data-call]")).to_have_count(5)
    page.select_option("#f-status", "awaiting_approval")
    expect(page.locator("table.queue tbody tr[data-call]")).to_have_count(3)
    page.select_option("#f-effect", "sensitive")
    expect(page.locator("table.queue tbody tr[data-call]")).to_have_count(1)
    expect(row(page, waiting["call"])).to_be_visible()
    assert "status=awaiting_approval" in page.url and "effect=sensitive" in page.url
    page.click("#f-reset")
    expect(page.locator("table.queue tbody tr[data-call]")).to_have_count(5)
    page.fill("#top-q", held["call"])
    page.press("#top-q", "Enter")
    expect(page.locator("table.queue tbody tr[data-call]")).to_have_count(1)
    expect(page.locator(".note")).to_contain_text("in every status")


def test_another_tenants_data_never_shows(page: Any, live_gateway: LocalGateway,
                                          acme: Tenant, other: Tenant) -> None:
    theirs = other.held_call("Max")
    their_wait = other.pending_order(sku="espresso")
    signed_in(page, live_gateway, acme)
    expect(page.locator("#queue")).to_contain_text("Nothing pending")
    assert page.locator("#f-tenant option").all_inner_texts() == ["All visible", acme.name]
    page.goto(f"{live_gateway.url}/admin?q={theirs['call']}")
    expect(page.locator("#queue")).to_contain_text("Nothing matches")
    page.goto(f"{live_gateway.url}/admin/sessions/{theirs['session']}")
    expect(page.locator(".fragment-error")).to_contain_text("not found")
    page.goto(f"{live_gateway.url}/admin/health")
    expect(page.locator("#prepared-count")).to_have_text("0")
    content = page.content()
    for secret in (theirs["call"], theirs["session"], their_wait["turn"], other.name):
        assert secret not in content


def test_health_panel(page: Any, live_gateway: LocalGateway, acme: Tenant) -> None:
    waiting = acme.pending_order()
    acme.held_call("Ned")
    signed_in(page, live_gateway, acme, "/admin/health")
    expect(page.locator("#prepared-count")).to_have_text("1")
    expect(page.locator(".prepared-list")).to_contain_text("decision: approval")
    expect(page.locator("#h-held").locator("..")).to_contain_text("1 open turn")
    expect(page.locator(".beats")).to_contain_text("(this one)")
    expect(page.locator("#hit-rate")).to_have_text("100%")  # the committed order turn
    acme.admin.post(f"/v1/calls/{waiting['call']}/deny", {"reason": "test"}, expect=200)
    expect(page.locator("#prepared-count")).to_have_text("0")


def test_phone_layout_has_no_sideways_scroll(browser: Any, live_gateway: LocalGateway,
                                             acme: Tenant) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2)
    phone = context.new_page()
    phone.set_default_timeout(LIVE_S)
    try:
        held = acme.held_call("Ola")
        signed_in(phone, live_gateway, acme)
        line = row(phone, held["call"])
        expect(line).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        box = line.bounding_box()
        assert box is not None and box["width"] <= PHONE["width"]
        phone.goto(f"{live_gateway.url}/admin/sessions/{held['session']}")
        expect(phone.locator(f'g.lane[data-call="{held["call"]}"]')).to_have_count(1)
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone.goto(f"{live_gateway.url}/admin")
        line.get_by_role("button", name="Cancel call").click()
        confirm(phone, "Cancel call")
        expect(line).to_have_count(0)
    finally:
        context.close()

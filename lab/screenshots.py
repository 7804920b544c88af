"""``make screenshots``: PNGs of the dashboard's main views, from a real gateway.

    python -m lab.screenshots --out docs/screenshots

Starts the embedded Postgres (or uses ``SPECGATE_DATABASE_URL``), a gateway and a tool
worker, plays a few voice sessions with the demo adapter at speaking pace (transcript chunks,
speculative calls, an amendment, a committed turn waiting for an approval, a turn still being
spoken), then signs in to ``/admin`` in Debian's headless Chromium and saves the queue, a
session timeline and the health panel at laptop and phone widths. Everything it created is
settled afterwards (approvals denied, open turns cancelled, its keys revoked).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.auth.service import create_key, revoke_key
from gateway.children import LocalWorker, settings_env
from gateway.config import Settings, get_settings
from gateway.db import make_engine
from gateway.migrate import migrate_all
from lab.browser import LAPTOP, PHONE, launch
from lab.demo import shop
from lab.servers import LocalGateway

TENANT = "acme-voice"
STOCK = {"espresso": 10, "grinder": 3, "filter": 20, "kettle": 1}
# (name, path, what must be shown, what a phone's first screen should start at)
VIEWS = (("queue", "/admin", "table.queue tbody tr[data-call]", "#queue"),
         ("timeline", "/admin/sessions/{session}", "svg.chart g.lane", "figure.timeline"),
         ("health", "/admin/health", "#hit-rate", None))


@dataclass
class Agent:
    """A voice agent's side of a session: transcript chunks and calls, at speaking pace."""

    client: httpx.Client
    pace_s: float
    session: str = ""
    turn: str = ""
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)

    def post(self, path: str, body: Any) -> Any:
        response = self.client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def open(self, metadata: dict[str, Any]) -> Agent:
        created = self.post("/v1/sessions", {"metadata": metadata})
        self.session, self.turn = created["id"], created["turns"][0]["id"]
        return self

    def hear(self, text: str, final: bool = False) -> None:
        time.sleep(self.pace_s)
        self.post(f"/v1/sessions/{self.session}/transcript", {"text": text, "final": final})

    def call(self, cid: str, tool: str, arguments: dict[str, Any], **extra: Any) -> None:
        body = {"tool": tool, "client_call_id": cid, "arguments": arguments, **extra}
        self.calls[cid] = self.post(f"/v1/sessions/{self.session}/calls?wait=10", body)

    def commit(self) -> None:
        time.sleep(self.pace_s)
        self.post(f"/v1/sessions/{self.session}/turns/{self.turn}/commit", {})


def play(client: httpx.Client, pace_s: float) -> dict[str, str]:
    """The sessions the pictures show; returns their ids by role."""
    ann = Agent(client, pace_s).open({"caller": "Ann", "channel": "phone", "api_key": "hidden"})
    ann.hear("Hi, this is Ann, I'd like to order")
    ann.call("1", "demo.create_order", {"customer": "Ann"})
    ann.hear("two bags of espresso")
    ann.call("2", "demo.add_item", {"order_id": "$1.order_id", "sku": "espresso", "quantity": 2},
             depends_on=["1"])
    ann.hear("no wait, one grinder instead")
    ann.call("2", "demo.add_item", {"order_id": "$1.order_id", "sku": "grinder"},
             depends_on=["1"], supersedes="2")
    ann.call("3", "demo.shipping_quote", {"sku": "grinder", "country": "DE"})
    ann.hear("and pay with the card ending 4242")
    ann.call("4", "demo.place_order", {"order_id": "$1.order_id", "card_last4": "4242"},
             depends_on=["2"])
    ann.hear("Hi, this is Ann, I'd like to order one grinder, and pay with the card ending 4242",
             final=True)
    ann.commit()

    bob = Agent(client, pace_s / 2).open({"caller": "Bob", "channel": "web"})
    bob.hear("Bob here, start an order")
    bob.call("1", "demo.create_order", {"customer": "Bob"})
    bob.hear("with a hundred filters")
    bob.call("2", "demo.add_item", {"order_id": "$1.order_id", "sku": "filter", "quantity": 5},
             depends_on=["1"])
    bob.hear("and I'll pay with")
    bob.call("3", "demo.place_order", {"order_id": "$1.order_id", "card_last4": "1881"},
             depends_on=["2"])

    cy = Agent(client, pace_s / 3).open({"caller": "Cy", "channel": "phone"})
    cy.hear("Cy calling, what does shipping")
    cy.call("1", "demo.shipping_quote", {"sku": "kettle", "country": "FR"})
    cy.hear("to France cost for a kettle?", final=True)
    cy.commit()
    return {"session": ann.session, "bob": bob.session, "cy": cy.session}


def capture(base_url: str, admin_key: str, out: Path, session: str) -> list[Path]:
    """Sign in and save every view at both widths; returns the files written."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for width, viewport, scale, full in (("laptop", LAPTOP, 1, True),
                                                 ("phone", PHONE, 2, False)):
                context = browser.new_context(viewport=viewport, device_scale_factor=scale)
                page = context.new_page()
                page.goto(f"{base_url}/admin")
                page.fill("#api-key", admin_key)
                page.click("#login-form button[type=submit]")
                page.wait_for_selector("#who-tenant", state="visible")
                for name, path, ready, start in VIEWS:
                    page.goto(base_url + path.format(session=session))
                    page.wait_for_selector(ready)
                    page.wait_for_selector("#live-state[data-state=live]")
                    if start and not full:  # a phone's screen starts at what matters
                        page.locator(start).evaluate("el => el.scrollIntoView()")
                    page.wait_for_timeout(300)
                    target = out / f"{name}-{width}.png"
                    page.screenshot(path=str(target), full_page=full)
                    written.append(target)
                context.close()
        finally:
            browser.close()
    return written


def settle(client: httpx.Client, reason: str, headers: dict[str, str] | None = None) -> None:
    """Deny what waits for an approval and cancel open turns, so nothing stays held (the
    client, or ``headers``, carry an admin key)."""

    def queue() -> list[dict[str, Any]]:
        page = client.get("/v1/admin/queue", params={"limit": 200}, headers=headers)
        return list(page.json()["items"])

    for item in queue():
        if "deny" in item["actions"]:
            client.post(f"/v1/calls/{item['id']}/deny", json={"reason": reason}, headers=headers)
    for item in queue():  # read again: a denial settles the other calls of its turn
        if "cancel_turn" in item["actions"]:
            client.post(f"/v1/sessions/{item['session_id']}/turns/{item['turn_id']}/cancel",
                        json={"reason": reason}, headers=headers)


def run(settings: Settings, out: Path, pace_s: float = 0.6) -> list[Path]:
    settings = settings.model_copy(update={
        "approval_policy": {"*": ["demo.place_order"]},
        "adapters": list(dict.fromkeys([*settings.adapters, "demo"]))})
    ledger_url = migrate_all(settings)
    shop.restock(settings.tool_database_urls.get("demo", ledger_url), STOCK)
    engine = make_engine(ledger_url, pool_size=1)
    keys = [create_key(engine, TENANT, role, name="screenshots") for role in ("app", "admin")]
    settings.home.mkdir(parents=True, exist_ok=True)
    env = settings_env(settings, ledger_url)
    # A worker of our own (not ``serve --worker``): stopping it is then ours to do.
    worker = LocalWorker(env=env, log_path=settings.home / "screenshots-worker.log")
    try:
        worker.start()
        with LocalGateway(env=env, log_path=settings.home / "screenshots-gateway.log") as gateway:
            auth = {"Authorization": f"Bearer {keys[1][1]}"}
            app = httpx.Client(base_url=gateway.url, timeout=30,
                               headers={"Authorization": f"Bearer {keys[0][1]}"})
            admin = httpx.Client(base_url=gateway.url, timeout=30, headers=auth)
            with app, admin:
                try:
                    sessions = play(app, pace_s)
                    return capture(gateway.url, keys[1][1], out, sessions["session"])
                finally:
                    settle(admin, "screenshots done")
    finally:
        worker.stop()
        for key_id, _ in keys:
            revoke_key(engine, TENANT, key_id, keep_last_admin=False)
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--pace", type=float, default=0.6,
                        help="Seconds between transcript chunks (speaking pace).")
    args = parser.parse_args(argv)
    started = time.monotonic()
    for path in run(get_settings(), args.out, args.pace):
        print(path)
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

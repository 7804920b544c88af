"""``specgate demo``: set up a real gateway, play the session, check and summarise the outcome.

Why a child process and real keys: the demo is the first thing a new user runs, so it must
exercise the production path (``specgate serve`` over HTTP, API keys, the SSE stream) and clean
up after itself — the server is stopped and the demo's keys revoked whatever happens.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from sqlalchemy.engine import make_url

from gateway.auth.service import create_key, revoke_key
from gateway.children import settings_env
from gateway.config import Settings
from gateway.db import make_engine
from gateway.migrate import migrate_all
from lab.demo import shop, view
from lab.demo.player import ANN, OTHER, Api, DemoError, Player
from lab.demo.script import NEEDS, TURNS, default_speed, speech_seconds
from lab.demo.timeline import EventFeed, Timeline
from lab.servers import LocalGateway

TENANTS = {ANN: "demo-voice-agent", OTHER: "demo-second-app"}
SSE_CATCH_UP_S = 15.0


def _keys(ledger_url: str, action: str, keys: dict[str, tuple[str, str]]) -> None:
    """Create (``action="create"``) or revoke the demo's two app keys, one tenant each."""
    engine = make_engine(ledger_url, pool_size=1)
    try:
        for who, tenant in TENANTS.items():
            if action == "create":
                keys[who] = create_key(engine, tenant, "app", name="specgate demo")
            elif who in keys:
                revoke_key(engine, tenant, keys[who][0])
    finally:
        engine.dispose()


def run_demo(settings: Settings, *, speed: float | None = None, fast: bool = False,
             json_out: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the report that ``--json-out`` writes."""
    console = console or Console()
    if "demo" not in settings.adapters:
        raise DemoError("the demo needs the 'demo' adapter (SPECGATE_ADAPTERS)")
    began = time.monotonic()
    with console.status("starting Postgres and migrating…"):
        ledger_url = migrate_all(settings)
        shop_url = settings.tool_database_urls.get("demo", ledger_url)
        restocked = shop.restock(shop_url, NEEDS)
        settings.home.mkdir(parents=True, exist_ok=True)
        server = LocalGateway(env=settings_env(settings, ledger_url),
                              log_path=settings.home / "demo-gateway.log")
    keys: dict[str, tuple[str, str]] = {}
    try:
        with console.status("starting a gateway…"):
            server.start()
            _keys(ledger_url, "create", keys)
        speed = None if fast else (speed or default_speed())
        _header(console, server, shop_url, speed)
        before = shop.snapshot(shop_url)
        report = _session(console, server.url, {w: k[1] for w, k in keys.items()}, speed)
        report.update(_check(shop_url, before, report), restocked=restocked, fast=fast,
                      speed=speed, gateway=server.url, elapsed_s=time.monotonic() - began)
    finally:
        server.stop()
        _keys(ledger_url, "revoke", keys)
    if not console.is_terminal:
        console.line()  # a Live on a file leaves its last frame without a line end
    console.print(view.summary(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _header(console: Console, server: LocalGateway, shop_url: str, speed: float | None) -> None:
    url = make_url(shop_url)
    where = url.render_as_string(hide_password=True).split("?")[0]
    pace = ("no pauses" if speed is None else
            f"speech ×{speed:g}: {speech_seconds():.0f} s in {speech_seconds() / speed:.1f} s")
    console.print(f"[bold]specgate demo[/] · gateway {server.url} · shop {where} · {pace}")


def _session(console: Console, base_url: str, keys: dict[str, str],
             speed: float | None) -> dict[str, Any]:
    """Play the script with the live view; the timeline comes from the SSE feeds."""
    ann, other = Api(base_url, keys[ANN]), Api(base_url, keys[OTHER])
    effects = {t["name"]: t["effect"] for t in ann.send("GET", "/v1/tools")["tools"]}
    timeline = Timeline(effects)
    player = Player(ann, other, timeline, speed)
    feeds: list[EventFeed] = []
    try:
        with Live(get_renderable=lambda: view.live(timeline, player.speaking), console=console,
                  refresh_per_second=12):
            player.start()
            feeds = [EventFeed(base_url, keys[who], sid, who, timeline.add_event)
                     for who, sid in ((ANN, player.session), (OTHER, player.other_session))]
            for feed in feeds:
                feed.start()
            player.play(TURNS)
            _catch_up(timeline, player, feeds)
        session = ann.send("GET", f"/v1/sessions/{player.session}")
    finally:
        player.abandon()
        for feed in feeds:
            feed.halt()
        for feed in feeds:
            feed.stop()
        ann.close()
        other.close()
    return _timeline_report(timeline, player, session)


def _catch_up(timeline: Timeline, player: Player, feeds: list[EventFeed]) -> None:
    if not timeline.wait_turns(player.turn_ids(), SSE_CATCH_UP_S):
        errors = "; ".join(f.error for f in feeds if f.error) or "no error reported"
        raise DemoError(f"the SSE streams did not show every turn decided within "
                        f"{SSE_CATCH_UP_S:g} s ({errors})")


def _timeline_report(timeline: Timeline, player: Player,
                     session: dict[str, Any]) -> dict[str, Any]:
    snapshot = timeline.view()
    calls = [{"who": r.who, "turn": r.turn, "call_id": r.call_id, "client_call_id": r.client_id,
              "tool": r.tool, "effect": r.effect, "arguments": r.arguments,
              "statuses": r.statuses, "times": r.times, "final": r.final, "reason": r.reason}
             for r in snapshot.rows]
    ann_calls = [c for c in calls if c["who"] == ANN]
    kept = [(c["tool"], c["resolved_arguments"]) for turn in session["turns"]
            for c in turn["calls"] if c["status"] == "committed"]
    turns = [{**t, "status": timeline.turns.get(t["id"])} for t in player.turns]
    return {
        "sessions": {ANN: player.session, OTHER: player.other_session},
        "turns": turns, "calls": calls, "events": timeline.events, "isolation": player.peeks,
        "order_id": player.order_id, "kept": kept,
        "summary": {"issued": len(ann_calls),
                    "kept": sum(c["final"] == "committed" for c in ann_calls),
                    "cancelled": sum(c["final"] == "cancelled" for c in ann_calls),
                    "cancel_reasons": dict(Counter(c["reason"] for c in ann_calls
                                                   if c["final"] == "cancelled"))},
    }


def _check(shop_url: str, before: shop.State, report: dict[str, Any]) -> dict[str, Any]:
    """Read the shop back directly and compare it with a sequential run of the kept calls."""
    after = shop.snapshot(shop_url)
    reference = shop.sequential_state(shop_url, before, report["kept"])
    differs = [name for name in after if after[name] != reference[name]]
    known = {o["id"] for o in before["demo_orders"]}
    new_orders = [o["id"] for o in after["demo_orders"] if o["id"] not in known]
    return {
        "order": shop.order_of(after, report["order_id"]) if report["order_id"] else None,
        "new_orders": new_orders,
        "stock": {"before": shop.stock(before), "after": shop.stock(after),
                  "sequential": shop.stock(reference)},
        "sequential": {"same": not differs, "differs": differs},
    }

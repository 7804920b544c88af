"""``specgate demo`` end to end: a real gateway child process, the scripted voice session over
REST, the timeline read from the SSE streams; the shop afterwards must equal a plain sequential
run of what Ann finally asked for."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from lab.demo.script import (
    ENDPOINT_S,
    HESITATION_S,
    PARTIAL_S,
    TURNS,
    WORD_S,
    Call,
    beats,
)
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import sequential_run, shop_state

ANN_ORDER = [
    ("1", "create_order", {"customer": "Ann"}),
    ("2", "add_item", {"order_id": "$1.order_id", "sku": "grinder", "quantity": 1}),
    ("3", "place_order", {"order_id": "$1.order_id", "card_last4": "4242"}),
]


def _row(report: dict[str, Any], who: str, tool: str, **arguments: Any) -> dict[str, Any]:
    rows = [c for c in report["calls"] if c["who"] == who and c["tool"] == f"demo.{tool}"
            and all(c["arguments"].get(k) == v for k, v in arguments.items())]
    assert len(rows) == 1, (tool, arguments, rows)
    return rows[0]


@pytest.fixture(scope="module")
def demo_report(topology: str, pg_home: Path, ledger_url: str, tool_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Any]:
    """Run the demo once (no pauses) on a freshly seeded shop, in both topologies."""
    from lab.demo import run_demo

    url = ledger_url if topology == "local" else tool_url
    settings = make_settings(pg_home, ledger_url, None if topology == "local" else tool_url)
    reset_shop(url, settings)
    out = tmp_path_factory.mktemp("demo") / "timeline.json"
    console = Console(file=io.StringIO(), width=120)
    returned = run_demo(settings, fast=True, json_out=out, console=console)
    report = json.loads(out.read_text())
    assert report["sequential"] == returned["sequential"]
    assert "a sequential run would have produced the same order" in console.file.getvalue()
    return report, url, settings


def test_timeline_shows_amend_stage_and_commit(demo_report: Any) -> None:
    report, _, _ = demo_report
    espresso = _row(report, "Ann", "add_item", sku="espresso")
    grinder = _row(report, "Ann", "add_item", sku="grinder")
    place = _row(report, "Ann", "place_order")
    assert espresso["statuses"] == ["proposed", "running", "held", "cancelled"]
    assert espresso["reason"] == "superseded"
    assert espresso["client_call_id"] == grinder["client_call_id"] == "2"
    assert grinder["statuses"] == ["proposed", "running", "held", "committed"]
    assert place["statuses"] == ["proposed", "staged", "committed"]
    assert place["effect"] == "sensitive" and grinder["effect"] == "reversible"
    assert _row(report, "Ann", "get_order")["statuses"][-2:] == ["succeeded", "committed"]
    second_turn = [c for c in report["calls"] if c["who"] == "Ann" and c["turn"] == 2]
    assert len(second_turn) == 2 and {c["final"] for c in second_turn} == {"cancelled"}
    assert report["summary"] == {"issued": 7, "kept": 4, "cancelled": 3, "cancel_reasons": {
        "superseded": 1, "the user took it back": 2}}
    assert [(t["who"], t["ending"], t["status"]) for t in report["turns"] if t["who"] == "Ann"] \
        == [("Ann", "commit", "committed"), ("Ann", "cancel", "cancelled")]


def test_timeline_is_the_sse_stream(demo_report: Any) -> None:
    """Every row is made of stream events, in event-id order per session."""
    report, _, _ = demo_report
    for who in ("Ann", "2nd"):
        ids = [e["id"] for e in report["events"] if e["who"] == who]
        assert ids == sorted(ids) and len(ids) == len(set(ids))
    for row in report["calls"]:
        streamed = [e["to"] for e in report["events"] if e["call_id"] == row["call_id"]]
        assert streamed == row["statuses"]


def test_isolation_before_and_after_commit(demo_report: Any) -> None:
    report, _, _ = demo_report
    peeks = {p["when"]: p for p in report["isolation"]}
    before, after = peeks["while the turn is open"], peeks["after commit"]
    assert before["order_id"] == after["order_id"] == report["order_id"]
    assert not before["found"] and before["call_status"] == "failed"
    assert before["error"]["code"] == "tool_retry"
    assert after["found"] and after["order_status"] == "placed"


def test_shop_equals_a_sequential_run(demo_report: Any) -> None:
    report, url, settings = demo_report
    stock = report["stock"]
    delta = {sku: n - stock["before"][sku] for sku, n in stock["after"].items()}
    assert delta == {"espresso": 0, "grinder": -1, "filter": 0, "kettle": 0}
    assert stock["after"] == stock["sequential"] and report["sequential"]["same"]
    order = report["order"]
    assert order["status"] == "placed" and order["total_cents"] == 8900
    assert [(i["sku"], i["quantity"]) for i in order["items"]] == [("grinder", 1)]
    assert order["payment"]["card_last4"] == "4242"
    assert report["new_orders"] == [report["order_id"]]
    # independently of the demo's own check: the same rows as a plain run on a reset shop
    after = shop_state(url)
    reset_shop(url, settings)
    sequential_run(url, ANN_ORDER)
    assert shop_state(url) == after


def test_server_is_stopped(demo_report: Any) -> None:
    report, _, _ = demo_report
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{report['gateway']}/healthz", timeout=2)


def test_script_follows_speech_timing() -> None:
    """Partials every 0.5 s of speech at 150 words/min; an action fires on the first partial
    that contains the phrase it reacts to, never before."""
    first = beats(TURNS[0])
    assert all(b.at_s == pytest.approx(PARTIAL_S * (n + 1)) for n, b in enumerate(first[:-1]))
    assert first[-1].final and first[-1].heard.endswith("4242.")
    fired = [(b.heard, r) for b in first for r in b.reactions]
    assert [r.tool for _, r in fired if isinstance(r, Call)] == [
        "demo.create_order", "demo.add_item", "demo.add_item", "demo.get_order",
        "demo.place_order"]
    assert "Ann" in fired[0][0] and "espresso" not in fired[0][0]
    assert "grinder" in fired[2][0] and fired[2][1].supersedes == "2"
    text = first[-1].heard
    words = sum(any(ch.isalnum() for ch in token) for token in text.split())
    spoken = words * WORD_S + text.count("…") * HESITATION_S
    assert first[-1].at_s == pytest.approx(spoken + ENDPOINT_S)

"""``specgate bench scale`` with tiny numbers: one and two real gateways on the benchmark's own
Postgres, behind the round-robin balancer, give sane figures; the held-turn probe finds exactly
the configured bound per gateway; nothing the run started outlives it, a failed run included.

No timing thresholds: machines are noisy, so only the shape and consistency of the figures are
checked, and the few figures that are exact (statements of the demo shop per turn, the bound).
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gateway.config import Settings
from lab.bench import pgcluster, scale
from lab.bench.scale import Options, run_benchmark
from lab.bench.scale_report import JSON_NAME, NO_STATEMENTS, render

GATEWAYS = [1, 2]
CLIENTS = 4
BOUND = 5  # held transactions per gateway: the probe must find exactly BOUND × gateways


def _settings(home: Path) -> Settings:
    return Settings(home=home, adapters=["demo"], max_held_transactions=BOUND)


def _ours(home: Path) -> list[psutil.Process]:
    """Processes still running on something under ``home`` (servers, gateways)."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = process.info["environ"] or {}
        except psutil.Error:
            continue
        if str(home) in cmdline or str(home) in environ.get("SPECGATE_HOME", ""):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One small run, shared by the tests below."""
    home = tmp_path_factory.mktemp("bench-scale").resolve()
    options = Options(gateways=GATEWAYS, clients=CLIENTS, seconds=3.0, held_cap=4 * BOUND,
                      idle_seconds=1.0, out=home / "out", home=home, verbose=True)
    console = Console(width=120, record=True)
    returned = run_benchmark(_settings(home), options, console)
    written = json.loads((home / "out" / JSON_NAME).read_text())
    assert written == json.loads(json.dumps(returned))
    yield {"report": written, "printed": console.export_text(), "home": home}


def test_every_topology_has_sane_figures(bench: dict[str, Any]) -> None:
    topologies = bench["report"]["topologies"]
    assert [t["gateways"] for t in topologies] == GATEWAYS
    for t in topologies:
        where = f"{t['gateways']} gateways"
        assert t["errors"] == 0, (where, t["error_samples"])
        assert t["turns"] > 0 and t["turns_per_s"] > 0, where
        assert 0 < t["turn_p50_ms"] <= t["turn_p99_ms"], where
        for figure in ("gateway_cpu_ms_per_turn", "postgres_cpu_ms_per_turn",
                       "bench_cpu_ms_per_turn"):
            assert math.isfinite(t[figure]) and t[figure] > 0, (where, figure)
        assert t["cores_busy"]["machine"] > 0, where
        locks = t["locks"]
        assert locks["samples"] > 0 and 0 <= locks["share_with_waiter"] <= 1, where
        assert t["idle"]["seconds"] >= 1.0, where


def test_statements_per_turn(bench: dict[str, Any]) -> None:
    """Each turn inserts exactly one order, one order line (the second add_item updates it) and
    one payment: the counts are per turn, and the benchmark's own queries are not in them."""
    if not bench["report"]["options"]["pg_stat_statements"]:
        pytest.skip("no PostgreSQL binaries with pg_stat_statements on this machine")
    for t in bench["report"]["topologies"]:
        statements = t["statements"]
        assert statements["per_turn"] > 0
        assert statements["total_calls"] >= statements["per_turn"] * t["turns"] - 1e-6
        per = {s["query"]: s["per_turn"] for s in statements["top"]}
        inserts = {q.split()[2]: v for q, v in per.items() if q.startswith("INSERT INTO demo_")}
        assert inserts == {"demo_orders": 1.0, "demo_order_items": 1.0, "demo_payments": 1.0}
        assert not any("pg_stat" in q for q in per)  # the benchmark's own queries
        assert all(e["per_s"] > 0 for e in statements["background_top"])
    assert "statements per turn (pg_stat_statements" in bench["printed"]


def test_held_turn_ceiling_is_the_bound_of_every_gateway(bench: dict[str, Any]) -> None:
    for t in bench["report"]["topologies"]:
        held = t["held"]
        assert held["ceiling"] == BOUND * t["gateways"], held
        assert held["stopped_by"] == "refused" and set(held["refused"]) == {
            "429 held_transactions_exhausted"}, held
        assert held["cancel_failed"] == 0
        assert held["postgres_uss_mb_per_turn"] > 0 and held["postgres_pss_mb_per_turn"] > 0
        assert held["postgres_processes_per_turn"] > 0.5  # a held turn holds a backend


def test_table_and_clean_up(bench: dict[str, Any]) -> None:
    printed = bench["printed"]
    for text in ("turns/s", "SQL statements/turn", "held-turn ceiling", "1 gateway",
                 "2 gateways", "(×"):
        assert text in printed, text
    assert not (bench["home"] / "postgres" / "data" / "postmaster.pid").exists()
    assert _ours(bench["home"]) == []


def test_without_pg_stat_statements_the_column_says_so(bench: dict[str, Any]) -> None:
    report = copy.deepcopy(bench["report"])
    for t in report["topologies"]:
        t["statements"] = None
    console = Console(width=200, record=True, file=io.StringIO())
    render(console, report, verbose=True)
    printed = console.export_text()
    assert NO_STATEMENTS in printed
    assert "statements per turn (pg_stat_statements" not in printed  # nor their table


def test_a_failed_run_leaves_no_server_behind(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the gateways started stops them and the benchmark's Postgres."""
    def fail(*args: object) -> None:
        raise RuntimeError("probe failed on purpose")

    monkeypatch.setattr(scale, "hold_turns", fail)
    home = tmp_path.resolve()
    options = Options(gateways=[1], clients=1, seconds=0.5, home=home)
    with pytest.raises(RuntimeError, match="on purpose"):
        run_benchmark(_settings(home), options, Console(file=io.StringIO()))
    assert _ours(home) == []


def test_without_postgres_binaries_the_embedded_server_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PostgreSQL binaries with pg_stat_statements: the embedded server, every figure but
    the statements, which the table says it does not have; the server is stopped after."""
    monkeypatch.setattr(pgcluster, "find_binaries", lambda: None)
    home = tmp_path.resolve()
    options = Options(gateways=[1], clients=2, seconds=1.0, held_cap=3, idle_seconds=0.5,
                      home=home)
    console = Console(width=200, record=True, file=io.StringIO())
    report = run_benchmark(_settings(home), options, console)
    [t] = report["topologies"]
    assert t["statements"] is None and not report["options"]["pg_stat_statements"]
    assert t["turns"] > 0 and t["errors"] == 0 and t["postgres_cpu_ms_per_turn"] > 0
    assert t["held"]["ceiling"] == 3 and t["held"]["stopped_by"] == "cap"
    assert NO_STATEMENTS in console.export_text()
    assert _ours(home) == []


def test_binaries_and_options() -> None:
    bindir = pgcluster.find_binaries()
    if bindir is not None:
        assert (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()
    assert Options(idle_seconds=None).idle_s(Settings(reaper_period_s=5)) == 10.0
    assert Options(idle_seconds=2).idle_s(Settings()) == 2


def test_command_is_registered() -> None:
    from specgate.cli import app

    result = CliRunner().invoke(app, ["bench", "scale", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--gateways", "--clients", "--seconds", "--turns", "--held-cap", "--out"):
        assert option in result.output, option
    refused = CliRunner().invoke(app, ["bench", "scale", "--gateways", "0"])
    assert refused.exit_code == 2

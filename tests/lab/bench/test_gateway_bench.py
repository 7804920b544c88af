"""``specgate bench gateway`` with tiny numbers against the test database: every scenario at
every concurrency yields sane figures (the task-runner ones through a real tool worker), and the
held calls it made were really committed.

No timing thresholds: machines are noisy, so only the shape and consistency of the figures and
the effects in the database are checked.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from gateway.children import LocalWorker
from lab.bench.gateway_bench import (
    SCENARIOS,
    TASK_SCENARIOS,
    Options,
    parse_sessions,
    run_benchmark,
)
from lab.bench.report import JSON_NAME
from lab.bench.scenarios import BenchError
from lab.bench.stats import Phase, merge, percentiles
from lab.servers import LocalGateway
from tests.conftest import make_settings
from tool_adapters.demo import schema as shop

SESSIONS = [1, 2]
CALLS = 5


@pytest.fixture(scope="module")
def bench(pg_home: Path, ledger_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small run, shared by the tests below (it starts a real gateway and tool worker)."""
    out = tmp_path_factory.mktemp("bench-out")
    options = Options(sessions=SESSIONS, calls=CALLS, out=out, home=pg_home)
    console = Console(width=100, record=True)
    returned = run_benchmark(make_settings(pg_home, ledger_url), options, console)
    written = json.loads((out / JSON_NAME).read_text())
    assert written["results"] == returned["results"]
    return {"report": written, "options": options, "url": ledger_url,
            "printed": console.export_text()}


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_every_scenario_at_every_concurrency_has_sane_figures(bench: dict[str, Any]) -> None:
    results = bench["report"]["results"]
    assert {(r["scenario"], r["sessions"]) for r in results} == {
        (s, n) for s in SCENARIOS for n in SESSIONS}
    for r in results:
        where = f"{r['scenario']} ×{r['sessions']}"
        assert r["n"] == CALLS * r["sessions"], where
        assert _finite_positive(r["p50_ms"]) and _finite_positive(r["p99_ms"]), where
        assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], where
        assert _finite_positive(r["calls_per_s"]), where
        no_gateway = r["scenario"] in ("direct", "plain_celery")
        assert (r["server_cpu_ms_per_call"] is None) == no_gateway, where
        assert (r["worker_cpu_ms_per_call"] is None) == (r["scenario"] not in TASK_SCENARIOS), where


def test_task_runner_rows_against_plain_celery(bench: dict[str, Any]) -> None:
    """Both task scenarios ran through the worker at every concurrency, and their difference
    is reported (no target)."""
    report = bench["report"]
    by = {(r["scenario"], r["sessions"]): r for r in report["results"]}
    for scenario in ("task", "plain_celery"):
        for n in SESSIONS:
            r = by[scenario, n]
            assert r["n"] == CALLS * n
            for figure in ("p50_ms", "p99_ms", "calls_per_s", "worker_cpu_ms_per_call"):
                assert _finite_positive(r[figure]), (scenario, n, figure)
    overhead = report["derived"]["task_overhead"]
    assert [e["sessions"] for e in overhead] == SESSIONS
    for entry in overhead:
        n = entry["sessions"]
        assert entry["p50_ms"] == pytest.approx(
            by["task", n]["p50_ms"] - by["plain_celery", n]["p50_ms"])
        assert "target_ms" not in entry
    assert report["options"]["worker_concurrency"] == max(SESSIONS)
    assert "overhead task−plain" in bench["printed"]


def test_derived_figures_and_machine_info(bench: dict[str, Any]) -> None:
    report = bench["report"]
    by = {(r["scenario"], r["sessions"]): r for r in report["results"]}
    overhead = report["derived"]["gateway_overhead"]
    assert [e["sessions"] for e in overhead] == SESSIONS
    for entry in overhead:
        n = entry["sessions"]
        assert entry["p50_ms"] == pytest.approx(by["safe", n]["p50_ms"] - by["direct", n]["p50_ms"])
    commits = report["derived"]["commit_5_held"]
    assert [e["sessions"] for e in commits] == SESSIONS
    for entry in (overhead[0], commits[0]):  # the targets are checked alone, at 1 session
        assert entry["ok"] == (entry["p50_ms"] <= entry["target_ms"])
    assert "target_ms" not in overhead[1] and "ok" not in commits[1]
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["postgres"]


def test_held_calls_were_committed(bench: dict[str, Any]) -> None:
    """Every add_item the run issued (warm-up included) is in the orders after the run."""
    report, options = bench["report"], bench["options"]
    per_step = {n: options.warmup_at(n) + options.calls_at(n) for n in SESSIONS}
    # reversible: one add_item per step; commit: five per step; sessions[:n] at level n
    expected = sum(n * per_step[n] * (1 + 5) for n in SESSIONS)
    assert report["held_add_items_committed"] == expected
    engine = create_engine(bench["url"], poolclass=NullPool)
    with engine.connect() as conn:
        total = conn.execute(select(func.sum(shop.order_items.c.quantity)).where(
            shop.order_items.c.order_id.in_(report["orders"]))).scalar()
    engine.dispose()
    assert len(set(report["orders"])) == max(SESSIONS)
    assert total == expected


@pytest.mark.parametrize("failing", ["worker start", "task call"])
def test_a_failure_stops_the_gateway_and_the_worker(
        failing: str, pg_home: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that does not start, or a session that fails mid-run, aborts the run, and no
    child process outlives it."""
    from lab.bench import gateway_bench, harness

    started: list[LocalGateway | LocalWorker] = []

    def recording(real: Callable[..., Any]) -> Callable[..., Any]:
        def start(*args: Any) -> Any:
            started.append(real(*args))
            return started[-1]
        return start

    def fail(*args: Any) -> float:
        raise BenchError(f"{failing} failed on purpose")

    monkeypatch.setattr(harness, "start_gateway", recording(harness.start_gateway))
    if failing == "worker start":
        monkeypatch.setattr(harness, "start_worker", fail)
    else:
        monkeypatch.setattr(harness, "start_worker", recording(harness.start_worker))
        monkeypatch.setattr(gateway_bench, "task_step", fail)
    options = Options(sessions=[1], calls=1, out=None, home=pg_home)
    with pytest.raises(BenchError, match="on purpose"):
        run_benchmark(make_settings(pg_home, ledger_url), options, Console(file=io.StringIO()))
    assert len(started) == (1 if failing == "worker start" else 2)
    for child in started:
        assert child.process is not None and child.process.poll() is not None, child


def test_percentiles_and_options() -> None:
    assert percentiles([5.0]) == (5.0, 5.0)
    p50, p99 = percentiles([float(x) for x in range(1, 101)])
    assert p50 == pytest.approx(50.5) and 99 < p99 <= 100
    assert parse_sessions("32, 1,1") == [1, 32]
    with pytest.raises(ValueError):
        parse_sessions("0,4")
    defaults = Options()
    assert defaults.calls_at(1) == 200 and defaults.calls_at(32) < 200
    assert defaults.rounds_at(1) == [50, 50, 50, 50]
    assert Options(calls=5).rounds_at(2) == [2, 1, 1, 1]
    assert Options(calls=2, rounds=4).rounds_at(1) == [1, 1]


def test_rounds_merge_into_one_phase() -> None:
    rounds = [Phase("safe", 2, [0.001, 0.002], wall_s=1.0, client_cpu_s=0.1, server_cpu_s=0.2),
              Phase("safe", 2, [0.003], wall_s=2.0, client_cpu_s=0.3, server_cpu_s=0.4)]
    merged = merge(rounds)
    assert merged.samples_s == [0.001, 0.002, 0.003]
    assert (merged.wall_s, merged.client_cpu_s) == (3.0, pytest.approx(0.4))
    assert merged.server_cpu_s == pytest.approx(0.6) and merged.worker_cpu_s is None
    with pytest.raises(ValueError):
        merge([*rounds, Phase("direct", 2, [0.001], 1.0, 0.1, None)])


def test_command_is_registered() -> None:
    from specgate.cli import app

    result = CliRunner().invoke(app, ["bench", "gateway", "--help"])
    assert result.exit_code == 0, result.output
    assert "--sessions" in result.output and "--calls" in result.output

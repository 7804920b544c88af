"""``specgate bench gateway``: what a tool call costs alone, through the gateway, held, and
committed, and what a task-runner call costs through the gateway against plain Celery — at
several concurrencies, measured side by side in one run on one machine.

Why one run: latency figures from different runs (or machines) are not comparable, and the
gateway's overhead is a difference of two of them. The client, the gateway and Postgres share
the machine's CPUs, so at high concurrency the client's own work is part of what is measured;
the report says so and records the CPU used per call by the client, the gateway and the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import typer
from celery import Celery
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy import Engine

from gateway.children import LocalWorker, exit_on_sigterm
from gateway.config import Settings
from lab.bench import harness, report
from lab.bench.runner import Worker, run_phase
from lab.bench.scenarios import (
    CALLS_PER_TURN,
    BenchSession,
    PlainCelery,
    commit_step,
    direct_step,
    http_floor_step,
    httpx_floor_step,
    plain_celery_step,
    reversible_step,
    safe_step,
    task_step,
)
from lab.bench.stats import Phase, Summary, merge, summarize
from lab.servers import LocalGateway

SCENARIOS = ("direct", "http_floor", "http_floor_httpx", "safe", "reversible", "commit",
             "plain_celery", "task")
TASK_SCENARIOS = frozenset({"plain_celery", "task"})
DEFAULT_CALLS = 200
DEFAULT_TOTAL_AT_CONCURRENCY = 160
DEFAULT_ROUNDS = 4


@dataclass(frozen=True)
class Options:
    """What the command line chose (``calls`` None: scaled by concurrency)."""

    sessions: list[int] = field(default_factory=lambda: [1, 32])
    calls: int | None = None
    out: Path | None = None
    home: Path = Path(".specgate/bench")
    rounds: int = DEFAULT_ROUNDS

    def calls_at(self, sessions: int) -> int:
        """Per session and scenario: 200 alone, fewer at concurrency, where each sample costs
        up to 7 requests (the commit scenario) and a default run must stay near 2 minutes."""
        if self.calls is not None:
            return self.calls
        return DEFAULT_CALLS if sessions == 1 else max(5, DEFAULT_TOTAL_AT_CONCURRENCY // sessions)

    def warmup_at(self, sessions: int) -> int:
        """Untimed steps per session before the window: enough to open connections and fill
        caches; at concurrency the server is already warm from the earlier phases."""
        return max(1, min(10, self.calls_at(sessions) // 4) // sessions)

    def rounds_at(self, sessions: int) -> list[int]:
        """Calls per session in each round: ``calls_at`` split as evenly as it goes, no round
        empty."""
        calls = self.calls_at(sessions)
        count = min(self.rounds, calls)
        return [calls // count + (1 if i < calls % count else 0) for i in range(count)]


def parse_sessions(text: str) -> list[int]:
    """``"1,32"`` → ``[1, 32]``; refuses anything but positive integers."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return sorted(set(values))


@dataclass
class _Run:
    """Everything the phases share while the gateway is up."""

    gateway: LocalGateway
    worker: LocalWorker
    sessions: list[BenchSession]
    engine: Engine
    celery: Celery
    progress: Progress
    stop: threading.Event = field(default_factory=threading.Event)

    def server_cpu(self) -> float:
        return _cpu_seconds(self.gateway)

    def worker_cpu(self) -> float:
        return _cpu_seconds(self.worker)


def _cpu_seconds(child: LocalGateway | LocalWorker) -> float:
    assert child.process is not None
    cpu = psutil.Process(child.process.pid).cpu_times()
    return float(cpu.user + cpu.system)


def _workers(run: _Run, scenario: str, count: int) -> list[Worker]:
    chosen = run.sessions[:count]
    if scenario == "direct":
        return [Worker(partial(direct_step, run.engine, s.order_id)) for s in chosen]
    if scenario == "plain_celery":
        return [Worker(partial(plain_celery_step, PlainCelery(run.celery, s.sku))) for s in chosen]
    step = {"http_floor": http_floor_step, "http_floor_httpx": httpx_floor_step,
            "safe": safe_step, "reversible": reversible_step, "commit": commit_step,
            "task": task_step}[scenario]
    return [Worker(partial(step, s), s.settle) for s in chosen]


def _measure(run: _Run, options: Options) -> list[Summary]:
    """Every scenario at every concurrency, in a fixed order, one progress bar each. Each
    concurrency runs in rounds, every scenario a slice of its calls per round, so a change in
    the machine's speed during the run (other tenants of its host) falls on every scenario
    alike instead of on whichever one was running then: the overheads are differences of two
    scenarios, and stay fair."""
    tasks = {(sc, n): run.progress.add_task(f"{report.LABELS[sc]} ×{n}", start=False,
                                            total=n * options.calls_at(n))
             for n in options.sessions for sc in SCENARIOS}
    summaries: list[Summary] = []
    for n in options.sessions:
        rounds: dict[str, list[Phase]] = {scenario: [] for scenario in SCENARIOS}
        for i, calls in enumerate(options.rounds_at(n)):
            for scenario in SCENARIOS:
                rounds[scenario].append(_phase(run, scenario, n, calls,
                                               options.warmup_at(n) if i == 0 else 0,
                                               tasks[scenario, n]))
        summaries.extend(summarize(merge(rounds[scenario])) for scenario in SCENARIOS)
    return summaries


def _phase(run: _Run, scenario: str, n: int, calls: int, warmup: int, task: TaskID) -> Phase:
    run.progress.start_task(task)
    gateway = scenario not in ("direct", "plain_celery")
    return run_phase(scenario, _workers(run, scenario, n), calls=calls, warmup=warmup,
                     advance=partial(run.progress.advance, task), stop=run.stop,
                     server_cpu=run.server_cpu if gateway else None,
                     worker_cpu=run.worker_cpu if scenario in TASK_SCENARIOS else None)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


@contextmanager
def _gateway_up(settings: Settings, url: str, tool_url: str, key: str,
                options: Options, console: Console) -> Iterator[_Run]:
    """Start the server, its tool worker, the sessions, the direct engine and the Celery client;
    tear all down on any exit, Ctrl-C included (a failed start too: no child is left behind)."""
    from gateway.db import make_engine
    from gateway.tasks.celery_app import make_celery

    most = max(options.sessions)
    env = harness.child_env(settings, url, held=max(64, 2 * most), concurrency=most)
    logs = settings.home.resolve()
    with ExitStack() as stack:
        gateway = harness.start_gateway(env, logs / "bench-gateway.log")
        stack.callback(gateway.stop)
        worker = harness.start_worker(env, logs / "bench-worker.log")
        stack.callback(worker.stop)  # runs first: the worker goes before its gateway
        engine = make_engine(tool_url, pool_size=most, max_overflow=0)
        stack.callback(engine.dispose)
        celery = make_celery(settings, url)
        stack.callback(celery.close)
        sessions: list[BenchSession] = []
        stack.callback(_close_all, sessions)
        for i in range(most):  # one by one: create_order numbers orders by counting them
            sessions.append(BenchSession.connect(gateway.url, key, harness.bench_sku(i)).open())
        with _progress(console) as progress:
            yield _Run(gateway, worker, sessions, engine, celery, progress)


def _close_all(sessions: list[BenchSession]) -> None:
    for session in sessions:
        session.close()


def run_benchmark(settings: Settings, options: Options,
                  console: Console | None = None) -> dict[str, Any]:
    """Set up, measure, print the table, write ``bench_gateway.json``; returns the report."""
    console = console or Console()
    settings = harness.bench_settings(settings, options.home)
    with console.status("preparing the database…"):
        url, tool_url = harness.prepare_database(settings, max(options.sessions))
        key = harness.create_app_key(url)
        machine = harness.machine_info(url)
    with _gateway_up(settings, url, tool_url, key, options, console) as run:
        summaries = _measure(run, options)
        orders = [s.order_id for s in run.sessions]
        committed = sum(s.committed_adds for s in run.sessions)
    result = report.build(summaries, machine, options_as_dict(options, settings),
                          orders=orders, committed_adds=committed)
    report.render(console, result)
    if options.out is not None:
        path = report.write(result, options.out)
        console.print(f"wrote {path}")
    return result


def options_as_dict(options: Options, settings: Settings) -> dict[str, Any]:
    """What was run, for the JSON: a figure means little without its sample size."""
    return {
        "sessions": options.sessions,
        "calls": {str(n): options.calls_at(n) for n in options.sessions},
        "warmup": {str(n): options.warmup_at(n) for n in options.sessions},
        "rounds": {str(n): len(options.rounds_at(n)) for n in options.sessions},
        "calls_per_turn": CALLS_PER_TURN,
        "broker": harness.broker_kind(settings),
        "worker_concurrency": max(options.sessions),
        "database": "embedded" if settings.embedded else "configured",
        "home": str(settings.home.resolve()),
    }


def main(sessions: str, calls: int | None, out: str | None, home: str,
         console: Console | None = None, rounds: int = DEFAULT_ROUNDS) -> dict[str, Any]:
    """Entry of the CLI command (kept here so ``specgate/cli.py`` needs only a lazy import)."""
    from gateway.config import get_settings

    try:
        chosen = parse_sessions(sessions)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--sessions") from error
    if calls is not None and calls < 1:
        raise typer.BadParameter(f"must be at least 1, got {calls}", param_hint="--calls")
    if rounds < 1:
        raise typer.BadParameter(f"must be at least 1, got {rounds}", param_hint="--rounds")
    options = Options(sessions=chosen, calls=calls, out=Path(out) if out else None,
                      home=Path(home), rounds=rounds)
    exit_on_sigterm()
    return run_benchmark(get_settings(), options, console)

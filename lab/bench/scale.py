"""``specgate bench scale``: what one, two and three gateways on one Postgres do for the same
clients, side by side in one run on one machine.

Why: a capacity model needs the costs that change with the number of gateways — turns per
second, CPU per turn in the gateways and in Postgres, statements per turn, lock waits, and how
many turns can hold a transaction at once and what each costs Postgres in memory — measured on
one machine in one run, because figures from different runs are not comparable.

For each topology: ``N`` real ``specgate serve`` processes on the benchmark's own Postgres
(``pgcluster``), behind a per-connection round-robin balancer (``lab.proxy``), no affinity; the
clients open a connection per request, so most requests reach a gateway that forwards them to
the session's owner. Per topology, in this order:

1. **held turns**, on the fresh gateways: sessions opened one by one, each holding one
   reversible call, until the gateways refuse (429/503: ``SPECGATE_MAX_HELD_TRANSACTIONS`` per
   gateway) or ``held_cap``; Postgres' memory before and while they are held; then they are
   cancelled. First, so each held turn needs a backend of its own, as it does in production
   when the turns are really concurrent, instead of reusing one that the throughput phase
   left in a pool;
2. the clients' sessions and one warm-up turn each;
3. an **idle window**, no requests: what the gateways run on their own (heartbeats, the
   reaper), as statements per second, to leave out of the statements per turn;
4. the **measured window**: every client does turns back to back for ``seconds`` (or
   ``turns`` each); CPU of the gateways, of Postgres and of this process are read at its
   edges, ``pg_stat_statements`` is reset before and read after, and ``pg_stat_activity`` is
   sampled every 50 ms for backends waiting on a lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from gateway.children import exit_on_sigterm, settings_env
from gateway.config import Settings
from lab.bench import harness, scale_report
from lab.bench.gateway_bench import parse_sessions
from lab.bench.pgcluster import DATABASE, BenchPostgres, bench_postgres, process_cpu_seconds
from lab.bench.pgwatch import LockSampler, Statement, Statements, net_calls
from lab.bench.scale_clients import Gateway, TurnClient, cancel_all, hold_turns
from lab.bench.stats import percentiles
from lab.proxy import RoundRobinProxy
from lab.servers import LocalGateway

DEFAULT_GATEWAYS = "1,2,3"
DEFAULT_CLIENTS = 32
DEFAULT_SECONDS = 20.0
DEFAULT_HELD_CAP = 256
MB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    """What the command line chose (``turns``: per client, instead of ``seconds``;
    ``idle_seconds`` None: two reaper periods)."""

    gateways: list[int] = field(default_factory=lambda: [1, 2, 3])
    clients: int = DEFAULT_CLIENTS
    seconds: float = DEFAULT_SECONDS
    turns: int | None = None
    held_cap: int = DEFAULT_HELD_CAP
    idle_seconds: float | None = None
    out: Path | None = None
    home: Path = Path(".specgate/bench-scale")
    verbose: bool = False

    def idle_s(self, settings: Settings) -> float:
        """Long enough for every gateway's periodic work to run about twice: a gateway's
        statements come in passes, one per period, so the rate is only as fine as one pass per
        gateway over the window."""
        if self.idle_seconds is not None:
            return self.idle_seconds
        return 2 * settings.reaper_period_s


@dataclass
class _Topology:
    """``n`` gateways behind the balancer, while they run."""

    n: int
    gateways: list[LocalGateway]
    front: Gateway
    pg: BenchPostgres
    progress: Progress

    def gateway_cpu(self) -> float:
        return sum(process_cpu_seconds(g.process.pid) for g in self.gateways if g.process)


@dataclass
class _Reading:
    """Clock and CPU at one edge of a window: the gateways', Postgres', this process's, and the
    whole machine's (busy time of all its cores: other work on the machine shows as the
    difference)."""

    wall: float
    gateways: float
    postgres: float
    bench: float
    machine: float

    @classmethod
    def take(cls, top: _Topology) -> _Reading:
        cpu = psutil.cpu_times()
        return cls(time.monotonic(), top.gateway_cpu(), top.pg.cpu_seconds(),
                   time.process_time(), sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0))


def run_benchmark(settings: Settings, options: Options,
                  console: Console | None = None) -> dict[str, Any]:
    """Start the benchmark's Postgres, measure every topology, print the table, write
    ``bench_scale.json`` with ``out``; returns the report. The server and every gateway are
    stopped on any exit, Ctrl-C included."""
    console = console or Console()
    if harness.ADAPTER not in settings.adapters:
        raise ValueError(f"the benchmark needs the {harness.ADAPTER!r} adapter; loaded: "
                         f"{settings.adapters}")
    home = options.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        with console.status("starting the benchmark's Postgres…"):
            pg = stack.enter_context(bench_postgres(home))
        # Everything on the benchmark's own server, whatever database is configured.
        settings = settings.model_copy(update={"home": home, "database_url": pg.url,
                                               "tool_database_urls": {}})
        with console.status("migrating and seeding…"):
            url, _ = harness.prepare_database(settings, options.clients)
            _index_orders(url)
            key = harness.create_app_key(url, name="specgate bench scale")
            machine = harness.machine_info(url)
        stats = Statements(pg.admin_conninfo, DATABASE) if pg.statements else None
        if stats is not None:
            stack.callback(stats.close)
        progress = stack.enter_context(_progress(console))
        topologies = [_topology(n, settings, url, key, pg, stats, options, progress)
                      for n in options.gateways]
    result = scale_report.build(topologies, machine, _options_dict(options, settings, pg))
    scale_report.render(console, result, verbose=options.verbose)
    if options.out is not None:
        console.print(f"wrote {scale_report.write(result, options.out)}")
    return result


def _index_orders(url: str) -> None:
    """``create_order`` numbers a customer's orders by counting them, and the demo shop has no
    index for that: without one, every turn would scan all orders, slower with each turn, and
    later topologies would pay for earlier ones."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX IF NOT EXISTS bench_demo_orders_customer "
                              "ON demo_orders (customer)"))
    finally:
        engine.dispose()


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<34}"), BarColumn(),
                    TextColumn("{task.fields[what]}"), TimeElapsedColumn(), console=console)


def _topology(n: int, settings: Settings, url: str, key: str, pg: BenchPostgres,
              stats: Statements | None, options: Options, progress: Progress) -> dict[str, Any]:
    """Start ``n`` gateways and the balancer, run the phases (see the module), stop them."""
    env = {**settings_env(settings, url), "SPECGATE_DRAIN_GRACE_S": "0"}
    logs = settings.home / "logs"
    with ExitStack() as stack:
        starting = progress.add_task(f"×{n} gateway(s): starting", total=None, what="")
        gateways = _start_gateways(n, env, logs, stack)
        progress.update(starting, total=1, completed=1, what="ready")
        proxy = stack.enter_context(RoundRobinProxy([("127.0.0.1", g.port) for g in gateways]))
        top = _Topology(n, gateways, Gateway("127.0.0.1", proxy.port, key), pg, progress)
        held = _held_phase(top, options, settings.max_held_transactions)
        clients = _open_clients(top, options)
        background, idle = _idle_window(top, stats, options.idle_s(settings))
        measured, window = _measured_window(top, clients, stats, options)
    return {"gateways": n, "clients": options.clients, "held": held, **measured,
            "statements": _statements(stats, measured, window, background, idle),
            "idle": idle}


def _start_gateways(n: int, env: dict[str, str], logs: Path,
                    stack: ExitStack) -> list[LocalGateway]:
    """``n`` ``specgate serve`` processes, started side by side; each is stopped when the
    topology ends, and all of them if one fails to start."""
    gateways = [LocalGateway(env=env, log_path=logs / f"gateways-{n}-{i}.log")
                for i in range(n)]
    for gateway in gateways:
        stack.callback(gateway.stop)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda g: g.start(), gateways))
    return gateways


def _held_phase(top: _Topology, options: Options, bound: int) -> dict[str, Any]:
    """The held-turn ceiling and Postgres' memory per held turn (see the module)."""
    expected = min(options.held_cap, bound * top.n)
    task = top.progress.add_task(f"×{top.n} gateway(s): held turns", total=expected,
                                 what=f"0/{expected}")
    count = [0]

    def advance() -> None:
        count[0] += 1
        top.progress.update(task, advance=1, what=f"{count[0]}/{expected}")

    _warm(top)
    before = top.pg.memory()
    probe = hold_turns(top.front, top.n, options.held_cap, advance)
    during = top.pg.memory()
    cancel_failed = cancel_all(top.front, probe.opened)
    held = len(probe.held)
    top.progress.update(task, total=max(held, 1), completed=max(held, 1),
                        what=f"{held} held, {probe.stopped_by}")
    per = 1 / held if held else 0.0
    return {
        "ceiling": held,
        "bound_per_gateway": bound,
        "cap": options.held_cap,
        "stopped_by": probe.stopped_by,
        "refused": dict(probe.refused),
        "cancel_failed": cancel_failed,
        "postgres_uss_mb_per_turn": (during.uss_bytes - before.uss_bytes) * per / MB,
        "postgres_pss_mb_per_turn": (during.pss_bytes - before.pss_bytes) * per / MB,
        "postgres_processes_per_turn": (during.processes - before.processes) * per,
        "postgres_uss_mb_before": before.uss_bytes / MB,
        "postgres_processes_before": before.processes,
    }


def _warm(top: _Topology) -> None:
    """A few sessions with a safe call each, so that every gateway's request threads have their
    own ledger connections before the memory baseline (a held turn's cost is its backend, not
    the first request's)."""
    for _ in range(2 * top.n):
        created = top.front.post("/v1/sessions", {"metadata": {"bench": "scale-warm"}}, 201)
        sid, tid = created["id"], created["turns"][0]["id"]
        top.front.post(f"/v1/sessions/{sid}/calls", {"tool": "demo.list_products",
                                                     "client_call_id": 1, "arguments": {}}, 201)
        top.front.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}, 200)


def _open_clients(top: _Topology, options: Options) -> list[TurnClient]:
    """Every client's session and one unmeasured turn, all at once (pools and caches warm)."""
    clients = [TurnClient(top.front, harness.bench_sku(i), f"scale-g{top.n}-c{i:03d}")
               for i in range(options.clients)]
    task = top.progress.add_task(f"×{top.n} gateway(s): sessions, warm-up", total=len(clients),
                                 what="")

    def warm(client: TurnClient) -> None:
        client.open().turn(measured=False)
        top.progress.advance(task)

    _run_all(warm, clients, threading.Event())
    return clients


def _idle_window(top: _Topology, stats: Statements | None,
                 seconds: float) -> tuple[dict[int, Statement], dict[str, Any]]:
    """No requests for ``seconds``: the statements the gateways run on their own, and what the
    gateways and Postgres use meanwhile."""
    task = top.progress.add_task(f"×{top.n} gateway(s): idle window", total=seconds,
                                 what=f"{seconds:g} s")
    if stats is not None:
        stats.reset()
    start = _Reading.take(top)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
        top.progress.update(task, completed=seconds - max(0.0, deadline - time.monotonic()))
    end = _Reading.take(top)
    statements = stats.read() if stats is not None else {}
    wall = end.wall - start.wall
    return statements, {
        "seconds": wall,
        "statements_per_s": sum(s.calls for s in statements.values()) / wall
        if stats is not None else None,
        "gateway_cpu_share": (end.gateways - start.gateways) / wall,
        "postgres_cpu_share": (end.postgres - start.postgres) / wall,
    }


def _measured_window(top: _Topology, clients: list[TurnClient], stats: Statements | None,
                     options: Options) -> tuple[dict[str, Any], dict[int, Statement]]:
    """Every client does turns back to back, all starting together; the window ends when the
    last one has finished the turn it was in when time ran out. The figures, and the
    statements run in the window."""
    timed = options.turns is None
    total = options.seconds if timed else float(options.turns or 0) * len(clients)
    task = top.progress.add_task(f"×{top.n} gateway(s): measured turns", total=total, what="")
    sampler = LockSampler(top.pg.admin_conninfo, DATABASE)
    edges: dict[str, _Reading] = {}
    deadline = [0.0]

    def begin() -> None:  # the barrier's action: once every client has arrived
        if stats is not None:
            stats.reset()
        sampler.start()
        edges["start"] = _Reading.take(top)
        deadline[0] = edges["start"].wall + options.seconds

    barrier = threading.Barrier(len(clients), action=begin)
    stop = threading.Event()

    def work(client: TurnClient) -> None:
        barrier.wait()
        done = 0
        while not stop.is_set():
            if (time.monotonic() >= deadline[0]) if timed else done >= (options.turns or 0):
                return
            client.turn()
            done += 1
            if not timed:
                top.progress.advance(task)

    def tick() -> None:
        turns = sum(c.turns for c in clients)
        if timed and "start" in edges:
            elapsed = min(options.seconds, time.monotonic() - edges["start"].wall)
            top.progress.update(task, completed=elapsed)
        top.progress.update(task, what=f"{turns} turns")

    try:
        _run_all(work, clients, stop, barriers=(barrier,), tick=tick)
    finally:
        waits = sampler.stop()
    end = _Reading.take(top)
    tick()
    statements = stats.read() if stats is not None else {}
    return _figures(clients, edges["start"], end, sampler.backend_cpu_s,
                    waits.as_dict()), statements


def _run_all(work: Callable[[TurnClient], None], clients: list[TurnClient],
             stop: threading.Event, barriers: tuple[threading.Barrier, ...] = (),
             tick: Callable[[], None] | None = None) -> None:
    """``work`` on a thread per client. On the first failure (a bug, not a refused or failed
    turn, which the clients count) or Ctrl-C: stop the others at their next turn, release the
    barriers, re-raise."""
    with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="scale") as pool:
        futures = [pool.submit(work, c) for c in clients]
        try:
            while True:
                done, pending = wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION)
                failed = next((f for f in done if f.exception()), None)
                if failed is not None:
                    raise failed.exception()  # type: ignore[misc]
                if tick is not None:
                    tick()
                if not pending:
                    return
        except BaseException:
            stop.set()
            for barrier in barriers:
                barrier.abort()
            raise


def _figures(clients: list[TurnClient], start: _Reading, end: _Reading, sampler_cpu: float,
             locks: dict[str, Any]) -> dict[str, Any]:
    """The measured window's figures, per turn where that is how a capacity model uses them."""
    turns = sum(c.turns for c in clients)
    wall = end.wall - start.wall
    per_turn = 1000.0 / turns if turns else float("nan")
    latencies_ms = [s * 1000.0 for c in clients for s in c.latencies_s]
    p50, p99 = percentiles(latencies_ms)
    refused: Counter[str] = Counter()
    for client in clients:
        refused.update(client.refused)
    postgres = end.postgres - start.postgres - sampler_cpu
    return {
        "turns": turns,
        "window_s": wall,
        "turns_per_s": turns / wall if wall > 0 else 0.0,
        "turn_p50_ms": p50,
        "turn_p99_ms": p99,
        "gateway_cpu_ms_per_turn": (end.gateways - start.gateways) * per_turn,
        "postgres_cpu_ms_per_turn": postgres * per_turn,
        "bench_cpu_ms_per_turn": (end.bench - start.bench) * per_turn,
        "cores_busy": {"gateways": (end.gateways - start.gateways) / wall,
                       "postgres": postgres / wall, "bench": (end.bench - start.bench) / wall,
                       "machine": (end.machine - start.machine) / wall},
        "sampler_postgres_cpu_s": sampler_cpu,
        "locks": locks,
        "refused": dict(refused),
        "errors": sum(c.errors for c in clients),
        "error_samples": [m for c in clients for m in c.error_samples][:10],
    }


def _statements(stats: Statements | None, measured: dict[str, Any],
                window: dict[int, Statement], background: dict[int, Statement],
                idle: dict[str, Any]) -> dict[str, Any] | None:
    """Statements per turn: the window's calls less the idle gateways' rate over as long
    (None without pg_stat_statements)."""
    if stats is None:
        return None
    turns = measured["turns"] or 1
    net = net_calls(window, background, measured["window_s"], idle["seconds"])
    top = sorted(net.values(), key=lambda s: s.calls, reverse=True)
    tables = _tool_tables()
    return {
        "per_turn": sum(s.calls for s in net.values()) / turns,
        # the tools' own queries (on their tables), which the adapter writes, not the gateway
        "tools_per_turn": sum(s.calls for s in net.values()
                              if any(t in s.query for t in tables)) / turns,
        "total_per_turn": sum(s.calls for s in window.values()) / turns,
        "total_calls": sum(s.calls for s in window.values()),
        "background_per_s": idle["statements_per_s"],
        "top": [{"query": s.query, "per_turn": s.calls / turns} for s in top[:25]],
        "background_top": [{"query": s.query, "per_s": s.calls / idle["seconds"]}
                           for s in sorted(background.values(), key=lambda s: -s.calls)[:10]],
    }


def _tool_tables() -> list[str]:
    """The demo shop's tables: a statement naming one is the tools' own."""
    from tool_adapters.demo import schema

    return [table.name for table in schema.metadata.sorted_tables]


def _options_dict(options: Options, settings: Settings, pg: BenchPostgres) -> dict[str, Any]:
    """What was run, for the JSON: a figure means little without its setup."""
    return {
        "gateways": options.gateways,
        "clients": options.clients,
        "seconds": None if options.turns is not None else options.seconds,
        "turns_per_client": options.turns,
        "held_cap": options.held_cap,
        "idle_seconds": options.idle_s(settings),
        "max_held_transactions": settings.max_held_transactions,
        "request_threads": settings.request_threads,
        "postgres": pg.kind,
        "pg_stat_statements": pg.statements,
        "home": str(settings.home),
    }


def main(gateways: str, clients: int, seconds: float, turns: int | None, held_cap: int,
         idle_seconds: float | None, out: str | None, home: str, verbose: bool,
         console: Console | None = None) -> dict[str, Any]:
    """Entry of the CLI command (kept here so ``specgate/cli.py`` needs only a lazy import)."""
    from gateway.config import get_settings

    try:
        chosen = parse_sessions(gateways)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--gateways") from error
    for name, value, least in (("--clients", clients, 1), ("--held-cap", held_cap, 1),
                               ("--turns", turns, 1), ("--seconds", seconds, 0.1),
                               ("--idle-seconds", idle_seconds, 0)):
        if value is not None and value < least:
            raise typer.BadParameter(f"must be at least {least}, got {value}", param_hint=name)
    options = Options(gateways=chosen, clients=clients, seconds=seconds, turns=turns,
                      held_cap=held_cap, idle_seconds=idle_seconds,
                      out=Path(out) if out else None, home=Path(home), verbose=verbose)
    exit_on_sigterm()
    return run_benchmark(get_settings(), options, console)

"""The ``specgate`` command: the gateway's commands (serve, worker, migrate, keys), the agent,
and the lab's (demo, bench, conformance, data, train).

It sits above every package it composes, and a command imports its code only when it runs:
``specgate serve`` never loads the agent, the lab or torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import import_module
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from gateway.config import get_settings


class LazyGroup(TyperGroup):
    """A command group some of whose commands are typer functions in other modules, imported
    when the command is looked up (to run it or to show its help)."""

    lazy: dict[str, str] = {}  # command name -> "module:function"

    # ctx and the command are typer's (vendored) click types, which it does not export.
    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *self.lazy]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, function = self.lazy[cmd_name].split(":")
        single = typer.Typer(add_completion=False)
        single.command(cmd_name)(getattr(import_module(module), function))
        return typer.main.get_command(single)


def lazy_group(commands: dict[str, str]) -> type[LazyGroup]:
    return type("Lazy", (LazyGroup,), {"lazy": commands})


app = typer.Typer(help="specgate: speculative tool calls, held until the user is done.",
                  no_args_is_help=True, cls=lazy_group({
                      "agent": "agent_worker.cli:agent",
                      "train": "lab.training.sft:train"}))
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (numbers measured side by side in one run).",
                        no_args_is_help=True)
conformance_app = typer.Typer(help="Conformance against public benchmarks, graded by their "
                              "own checkers.", no_args_is_help=True)
data_app = typer.Typer(help="Training data for local models (clock-based SFT samples).",
                       no_args_is_help=True,
                       cls=lazy_group({"make": "lab.training.data:make_command"}))
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")
app.add_typer(conformance_app, name="conformance")
app.add_typer(data_app, name="data")
console = Console()
T = TypeVar("T")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def migrate(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Create or upgrade the ledger tables and every adapter's tables."""
    from gateway.migrate import migrate_all

    _logging(verbose)
    url = migrate_all(get_settings())
    console.print(f"[green]migrated[/] {url}")


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8080,
          with_worker: Annotated[bool | None, typer.Option(
              "--worker/--no-worker", help="Start a tool worker too (default: with the "
              "embedded broker, i.e. when no broker URL is set).")] = None,
          verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the gateway (HTTP API). With no database URL configured, the embedded Postgres is
    started and migrated first; with no broker URL, a tool worker is started beside it."""
    import uvicorn

    from gateway.app import create_app
    from gateway.children import LocalWorker, exit_on_sigterm
    from gateway.migrate import migrate_all
    from gateway.runtime import default_gateway_id
    from gateway.sessions.drain import DrainingServer

    _logging(verbose)
    settings = get_settings()
    if settings.embedded:
        migrate_all(settings)
    child = None
    if with_worker if with_worker is not None else settings.broker_url is None:
        child = LocalWorker(env={}, log_path=settings.home / "worker.log").start()
    # uvicorn shuts down on SIGTERM, then raises the signal again: with the default handler
    # that would end this process before the worker child is stopped.
    exit_on_sigterm()
    try:
        application = create_app(settings, gateway_id=default_gateway_id(port),
                                 advertise_url=_advertised(host, port))
        config = uvicorn.Config(application, host=host, port=port,
                                log_level="info" if verbose else "warning")
        DrainingServer(config, application, settings.drain_grace_s).run()
    finally:
        if child is not None:
            child.stop()


def _advertised(host: str, port: int) -> str:
    """Where other gateways reach this one unless SPECGATE_ADVERTISE_URL says otherwise: the
    address it listens on, or the machine's name when it listens on every interface."""
    import socket

    name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{name}]' if ':' in name else name}:{port}"


@app.command()
def worker(concurrency: Annotated[int | None, typer.Option(help="Tasks at once.")] = None,
           ready_file: Annotated[str | None, typer.Option(help="Touched once consuming.")] = None,
           verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the tool worker (Celery): task-runner tools, compensations, the outbox relay and the
    adapters' periodic jobs. With no broker URL configured, the ledger database is the broker."""
    from pathlib import Path

    from gateway.migrate import migrate_all
    from gateway.tasks.worker import run_worker

    _logging(verbose)
    settings = get_settings()
    if settings.embedded:
        migrate_all(settings)
    run_worker(settings, concurrency=concurrency, loglevel="INFO" if verbose else "WARNING",
               ready_file=Path(ready_file) if ready_file else None)


@app.command()
def demo(speed: Annotated[float | None, typer.Option(help="Playback speed, 1 = real speech; "
                                                     "default: about 10 s in all.")] = None,
         fast: Annotated[bool, typer.Option("--fast", help="No pauses at all.")] = False,
         json_out: Annotated[str | None, typer.Option(help="Write the timeline as JSON.")] = None,
         ) -> None:
    """Play a scripted voice order against a real gateway and show every call's fate."""
    from lab.demo.cli import demo_command

    raise typer.Exit(demo_command(get_settings(), speed, fast, json_out, console))


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
                role: Annotated[str, typer.Option(help="app or admin.")] = "app",
                name: str = "") -> None:
    """Create an API key and print it (it is shown only this once)."""
    from gateway.auth.service import Role, create_key
    from gateway.db import make_engine, resolve_database_url
    from gateway.migrate import migrate_all

    if role not in set(Role):
        raise typer.BadParameter(f"role must be one of {[r.value for r in Role]}, got {role!r}")
    settings = get_settings()
    url = migrate_all(settings) if settings.embedded else resolve_database_url(settings)
    engine = make_engine(url, pool_size=1)
    try:
        _, secret = create_key(engine, tenant, role, name)
    finally:
        engine.dispose()
    typer.echo(secret)


@bench_app.command("gateway")
def bench_gateway(sessions: str = "1,32", calls: int | None = None, out: str | None = None,
                  home: str = ".specgate/bench",
                  rounds: Annotated[int, typer.Option(
                      help="Rounds per concurrency: each scenario runs a slice of its calls "
                      "in each, so the scenarios share the machine's ups and downs.")] = 4,
                  ) -> None:
    """Tool call latency alone vs through the gateway (safe, held, commit of 5 held calls)."""
    from lab.bench.gateway_bench import main as bench_main

    bench_main(sessions, calls, out, home, console, rounds)


@bench_app.command("scale")
def bench_scale(
        gateways: Annotated[str, typer.Option(
            help="Gateway counts to compare, comma-separated.")] = "1,2,3",
        clients: Annotated[int, typer.Option(help="Concurrent sessions doing turns.")] = 32,
        seconds: Annotated[float, typer.Option(
            help="Measured window per gateway count.")] = 20.0,
        turns: Annotated[int | None, typer.Option(
            help="Turns per client instead of --seconds.")] = None,
        held_cap: Annotated[int, typer.Option(
            help="Most turns the held-turn probe opens per gateway count.")] = 256,
        idle_seconds: Annotated[float | None, typer.Option(
            help="Idle window that measures the gateways' own statements (default: two "
            "reaper periods).")] = None,
        out: Annotated[str | None, typer.Option(
            help="Directory to write bench_scale.json to.")] = None,
        home: str = ".specgate/bench-scale",
        verbose: Annotated[bool, typer.Option(
            "--verbose", "-v", help="Also list the statements per turn and those that waited "
            "for a lock.")] = False) -> None:
    """1, 2 and 3 gateways on one Postgres behind a round-robin balancer, side by side: turns/s,
    gateway and Postgres CPU per turn, SQL statements per turn, lock waits, the held-turn
    ceiling and Postgres memory per held turn. Runs its own Postgres under --home."""
    from lab.bench.scale import main as scale_main

    scale_main(gateways, clients, seconds, turns, held_cap, idle_seconds, out, home, verbose,
               console)


Domain = Annotated[str, typer.Option(help="retail or airline.")]
Tasks = Annotated[int | None, typer.Option(
    help="Run this many tasks, spread evenly over the domain (default: all).")]
TaskIds = Annotated[list[str] | None, typer.Option(
    "--task-id", help="Run only this task (repeatable).")]


def _run_tau2(options_from: Callable[[], T], main: Callable[[T, Console], int]) -> None:
    """Build a τ² command's options (a bad value is a usage error, a missing τ² a clear
    message) and exit with what its ``main`` returns."""
    from lab.conformance.reference import Tau2Missing

    try:
        options = options_from()
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    except Tau2Missing as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from error
    raise typer.Exit(main(options, console))


@bench_app.command("resume")
def bench_resume(
        model_path: Annotated[str | None, typer.Option(
            help="A model directory or .gguf (default: SmolLM2-135M-Instruct).")] = None,
        device: Annotated[str | None, typer.Option(
            help="cuda, cpu … (default: CUDA when present).")] = None,
        lengths: Annotated[str, typer.Option(
            help="Context lengths in tokens, comma-separated.")] = "1000,2000,3000",
        repeats: Annotated[int, typer.Option(help="Repetitions per length.")] = 5,
        threads: Annotated[int | None, typer.Option(
            help="torch CPU threads (default: torch's).")] = None,
        out: Annotated[str | None, typer.Option(help="Write the results as JSON.")] = None
) -> None:
    """Time to the first token after an injection, a local model's KV cache kept vs the whole
    context re-prefilled, side by side at several context lengths. Exits 1 if the cache changed
    the output."""
    from lab.bench import resume as resume_bench

    try:
        options = resume_bench.options_from(model_path, device, lengths, repeats, out, threads)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    raise typer.Exit(resume_bench.main(options, console))


@bench_app.command("tau2")
def bench_tau2(
        domain: Domain,
        out: Annotated[str, typer.Option(help="Directory for results.json, results.md and "
                                              "latency.png.")],
        corrections: Annotated[bool, typer.Option(
            "--corrections", help="The user first says a wrong value for an argument of a "
            "write and corrects it a few words later.")] = False,
        profile: Annotated[str, typer.Option(
            help="The oracle model's declared cost: cloud, edge or instant.")] = "cloud",
        tasks: Tasks = None,
        task_id: TaskIds = None,
        tool_latency: Annotated[str, typer.Option(
            help="Injected tool latency per call in seconds: 0.5-1 (uniform) or 0.7.")
                                ] = "0.5-1",
        seed: Annotated[int, typer.Option(help="Seed of the injected tool latency.")] = 0,
        home: str = ".specgate/bench-tau2",
        model: Annotated[str | None, typer.Option(
            help="A local model (directory or .gguf) for the speculative runs instead of the "
            "oracle, e.g. specgate train's async fine-tune (its out/final).")] = None,
        baseline_model: Annotated[str | None, typer.Option(
            help="A local model for the baseline runs (e.g. the sync fine-tune); default: "
            "--model.")] = None,
        held_out: Annotated[str | None, typer.Option(
            help="Only the domain's tasks in the test split of this specgate data make "
            "output (directory or manifest.json).")] = None,
        device: Annotated[str | None, typer.Option(
            help="Device of the local models (cuda, cpu…); default: CUDA when present.")
                          ] = None,
        max_new_tokens: Annotated[int, typer.Option(
            help="Most tokens a local model writes per step.")] = 256,
        tool_listing: Annotated[str | None, typer.Option(
            help="How the system prompt lists the tools: full or compact (agent_worker.prompt); "
            "default: the --held-out data's, else full. Use the listing the model was trained "
            "on.")] = None,
        threads: Annotated[int | None, typer.Option(
            help="torch's CPU threads for the local models (on a busy machine 1 is often "
            "fastest).")] = None) -> None:
    """Streaming replay of τ² tasks: the synchronous baseline and the speculative agent side by
    side through a real gateway, graded by τ²'s DB hash; post-turn latency, speedup, ideal
    bound. With --model, a real local model (its measured compute time on the simulated clock)
    instead of the oracle. Exits 1 when the speculative runs are less accurate than the
    baseline."""
    from lab.tau2bench import tau2_run

    _run_tau2(lambda: tau2_run.options_from(
        domain, corrections, profile, tasks, task_id or [], tool_latency, seed, out, home,
        model=model, baseline_model=baseline_model, held_out=held_out, device=device,
        max_new_tokens=max_new_tokens, tool_listing=tool_listing, threads=threads),
        tau2_run.main)


@conformance_app.command("tau2")
def conformance_tau2(
        domain: Domain,
        tasks: Tasks = None,
        task_id: TaskIds = None,
        speculative: Annotated[bool, typer.Option(
            "--speculative", help="Issue a wrong early call before each write and amend it "
            "before commit.")] = False,
        out: Annotated[str | None, typer.Option(help="Write the results as JSON.")] = None,
        home: str = ".specgate/conformance") -> None:
    """Replay τ²-bench's gold actions through a real gateway and grade them with τ²'s own DB
    hash and error texts; exits 1 on any mismatch."""
    from lab.conformance import run

    _run_tau2(lambda: run.options_from(domain, tasks, task_id or [], speculative, out, home),
              run.main)


def main() -> None:
    app()

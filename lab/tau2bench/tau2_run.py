"""``specgate bench tau2``: τ² tasks as streaming replays, the synchronous baseline and the
speculative agent side by side, through a real gateway, graded by τ²'s own DB hash.

Per task (``tau2_stream`` builds what the user says and the oracle's gold calls) and per mode:
the domain's tables are reset to τ²'s seed (``lab.conformance.seeding``), one session runs
against a real gateway server (a ``specgate serve`` child process, as for ``specgate
conformance tau2``), the tables are exported and hashed by τ²'s ``get_pydantic_hash``, and the
hash is compared with the one of τ²'s own replay of the gold actions. Baseline = the runtime's
synchronous mode (the whole utterance at once, then one call per observed step); speculative =
the same oracle and runtime on the streamed utterance.

**Clocks.** Each session runs on a ``VirtualClock``: speech (150 words/min), the model (the
declared latency profile) and the tools (injected latency, U[0.5, 1] s per call unless set)
cost simulated time; the gateway does its real work — HTTP, the ledger, held transactions,
commit — but the clock stands still during each request, so the figures are the same on any
machine and wall time is only the gateway's and the grader's real work. A call's injected
latency is drawn from a hash of the task, the call and ``--seed``, so the same call waits as
long in both modes (and in the ideal bound).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent_worker import inputs
from agent_worker.backends.oracle import OracleBackend, OracleTask, literals
from agent_worker.calls import ToolLatency
from agent_worker.clock import VirtualClock
from agent_worker.errors import AgentError
from agent_worker.gateway_client import GatewayClient
from agent_worker.model import Backend, LatencyProfile, profile
from agent_worker.prompt import TOOL_LISTINGS, ToolListing
from agent_worker.runtime import AgentConfig
from agent_worker.session import Source, latency_range, run_session, stable_latency
from agent_worker.trace import Trace
from gateway.children import exit_on_sigterm
from lab.tau2bench import ideal
from lab.tau2bench import tau2_report as report_module
from lab.tau2bench.tau2_stream import GoldStep, StreamTask, build

SESSION_WALL_LIMIT_S = 300.0  # a session that hangs (a bug) fails its task, not the run
LOCAL_SESSION_WALL_LIMIT_S = 1800.0


@dataclass(frozen=True)
class Options:
    domain: str
    corrections: bool = False
    profile: str = "cloud"
    tasks: int | None = None  # None: all
    task_ids: tuple[str, ...] = ()
    tool_latency: tuple[float, float] = (0.5, 1.0)
    seed: int = 0
    out: Path | None = None
    home: Path = Path(".specgate/bench-tau2")
    model: Path | None = None  # a local model for the speculative runs (else the oracle)
    baseline_model: Path | None = None  # for the baseline runs; default: ``model``
    device: str | None = None  # of the local models; default: CUDA when present, else CPU
    max_new_tokens: int = 256  # per step of a local model
    tool_listing: ToolListing = "full"  # how the system prompt lists the tools
    threads: int | None = None  # torch's CPU threads for the local models; None: its default

    @property
    def latency_profile(self) -> LatencyProfile:
        return profile(self.profile)

    def model_for(self, mode: str) -> Path | None:
        """The local model of ``mode``'s runs, or None for the oracle."""
        if mode == "baseline":
            return self.baseline_model or self.model
        return self.model

    @property
    def session_limit_s(self) -> float:
        """Wall time a session may take: a real model on a CPU needs far longer than the
        oracle; past it the task fails (a hang must not stop the run)."""
        return SESSION_WALL_LIMIT_S if self.model is None else LOCAL_SESSION_WALL_LIMIT_S


@dataclass
class ModeResult:
    mode: str
    accurate: bool = False
    db_hash: str | None = None
    post_turn_s: float | None = None  # last word → answer start
    post_turn_end_s: float | None = None  # last word → answer end
    answered_at: float | None = None  # simulated seconds from the first word
    steps: int = 0
    interrupts: int = 0
    model_errors: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # issued, committed, cancelled, failed
    actions: dict[str, int] = field(default_factory=dict)  # the model's: pause, tool_call, …
    issued_while_speaking: int = 0
    wrong_calls: int = 0  # carrying the corrected (wrong) value
    wrong_writes: int = 0  # of them, writes (held or staged, then undone)
    wrong_committed: int = 0
    wall_s: float = 0.0
    error: str | None = None


@dataclass
class TaskRow:
    task_id: str
    words: int
    speech_s: float
    gold_calls: int
    writes: int
    expected_hash: str
    ideal_s: float
    results: dict[str, ModeResult]
    utterance: str = ""
    correction: dict[str, Any] | None = None
    correction_note: str = ""

    @property
    def speedup(self) -> float | None:
        base, spec = self.results["baseline"], self.results["speculative"]
        if base.post_turn_s is None or not spec.post_turn_s:
            return None
        return base.post_turn_s / spec.post_turn_s

    @property
    def ideal_ratio(self) -> float | None:
        spec = self.results["speculative"].post_turn_s
        return None if spec is None or self.ideal_s < 1e-3 else spec / self.ideal_s


def options_from(domain: str, corrections: bool, profile_name: str, tasks: int | None,
                 task_ids: list[str], tool_latency: str, seed: int, out: str | None,
                 home: str, model: str | None = None, baseline_model: str | None = None,
                 held_out: str | None = None, device: str | None = None,
                 max_new_tokens: int = 256, tool_listing: str | None = None,
                 threads: int | None = None) -> Options:
    """The command line's choices, checked (``ValueError`` names the offending option)."""
    from agent_worker.local import weights
    from lab.conformance.run import options_from as conformance_options

    if baseline_model is not None and model is None:
        raise ValueError("--baseline-model needs --model (the speculative runs' model)")
    listing = tool_listing or "full"
    if held_out is not None:
        manifest = data_manifest(Path(held_out))
        task_ids = [*task_ids, *held_out_ids(manifest, Path(held_out), domain)]
        listing = tool_listing or manifest.get("parameters", {}).get("tool_listing", "full")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: at least 1")
    if listing not in TOOL_LISTINGS:
        raise ValueError(f"--tool-listing {listing!r}: one of {', '.join(TOOL_LISTINGS)}")
    checked = conformance_options(domain, tasks, task_ids, False, None, home)
    profile(profile_name)
    try:
        paths = [None if p is None else weights.source(p).path for p in (model, baseline_model)]
    except weights.WeightsError as error:
        raise ValueError(str(error)) from error
    return Options(domain=domain, corrections=corrections, profile=profile_name,
                   tasks=checked.tasks, task_ids=checked.task_ids,
                   tool_latency=latency_range(tool_latency), seed=seed,
                   out=Path(out) if out else None, home=Path(home), model=paths[0],
                   baseline_model=paths[1], device=device, max_new_tokens=max_new_tokens,
                   tool_listing=cast(ToolListing, listing), threads=threads)


def data_manifest(where: Path) -> dict[str, Any]:
    """A ``specgate data make`` manifest (its directory or manifest.json)."""
    path = where / "manifest.json" if where.is_dir() else where
    try:
        manifest = json.loads(path.read_text())
        manifest["split"]["test"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--held-out {where}: not a data manifest ({error})") from error
    return cast(dict[str, Any], manifest)


def held_out_ids(manifest: dict[str, Any], where: Path, domain: str) -> list[str]:
    """The τ² task ids of ``domain`` in the manifest's test split."""
    prefix = f"tau2-{domain}-"
    ids = [key[len(prefix):] for key in manifest["split"]["test"] if key.startswith(prefix)]
    if not ids:
        raise ValueError(f"--held-out {where}: its test split has no {domain} task")
    return ids


class Harness:
    """A seeded domain, a key and a real gateway server; runs variants of the benchmark on
    them (τ²'s reference replays are computed once, ahead, in a worker process)."""

    def __init__(self, prepared: Any, gateway_url: str, machine: dict[str, Any],
                 effects: dict[str, str], domain: str) -> None:
        self.prepared, self.gateway_url = prepared, gateway_url
        self.machine, self.effects, self.domain = machine, effects, domain
        self._ahead: Any = None  # lab.conformance.reference.ReplaysAhead, once needed
        self._models: dict[Path, tuple[Any, Any]] = {}  # local models, loaded once

    def reference(self, index: int) -> Any:
        """τ²'s replay of task ``index`` (of the prepared tasks)."""
        from lab.conformance.reference import ReplaysAhead

        if self._ahead is None:
            self._ahead = ReplaysAhead(self.domain, self.prepared.tasks)
        return self._ahead[index]

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()  # stops τ²'s worker process

    def _backend(self, mode: str, oracle: OracleTask, clock: VirtualClock,
                 options: Options) -> Backend:
        """The oracle (declared cost), or a local model whose measured compute time is charged
        to the session's simulated clock (speech and tools stay simulated)."""
        path = options.model_for(mode)
        if path is None:
            return OracleBackend(oracle, clock, options.latency_profile,
                                 parallel=mode == "speculative")
        from agent_worker.backends.local import LocalBackend
        from agent_worker.local import weights

        if path not in self._models:
            if options.threads is not None:
                import torch

                torch.set_num_threads(options.threads)  # this process runs one model at a time
            self._models[path] = weights.load(path, device=options.device)
        model, tokenizer = self._models[path]
        return LocalBackend(model, tokenizer, clock=clock, max_new_tokens=options.max_new_tokens)

    def stream_task(self, index: int, corrections: bool) -> tuple[StreamTask, Any]:
        task, ref = self.prepared.tasks[index], self.reference(index)
        return build(self.domain, str(task.id), task.user_scenario.instructions,
                     gold_steps(ref, self.effects), corrections), ref

    def run(self, options: Options, console: Console | None = None) -> dict[str, Any]:
        """One variant over every prepared task; returns the report (written with ``out``)."""
        console = console or Console()
        started = time.perf_counter()
        rows = asyncio.run(self._all(options, console))
        report = report_module.build(rows, options, self.machine, time.perf_counter() - started)
        report_module.render(console, report)
        if options.out is not None:
            for path in report_module.write(report, options.out):
                console.print(f"wrote {path}")
        return report

    async def _all(self, options: Options, console: Console) -> list[TaskRow]:
        rows: list[TaskRow] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[wrong]} inaccurate"), TimeElapsedColumn())
        async with httpx.AsyncClient(
                base_url=self.gateway_url, timeout=120,
                headers={"Authorization": f"Bearer {self.prepared.key}"}) as http:
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task(_label(options), total=len(self.prepared.tasks),
                                        wrong=0)
                for index in range(len(self.prepared.tasks)):
                    rows.append(await self._task(http, index, options))
                    wrong = sum(not r.accurate for row in rows for r in row.results.values())
                    progress.update(bar, advance=1, wrong=wrong)
        return rows

    async def _task(self, http: httpx.AsyncClient, index: int, options: Options) -> TaskRow:
        stream, ref = self.stream_task(index, options.corrections)
        low, high = options.tool_latency
        latency = stable_latency(low, high, options.seed, f"{self.domain}/{stream.task_id}")
        bound = plan(stream, latency, options.latency_profile)
        oracle = stream.oracle(bound.used, bound.late)
        results = {mode: await self._session(http, stream, oracle, mode, latency, ref.db_hash,
                                             options) for mode in report_module.MODES}
        correction = None
        if stream.correction is not None:
            correction = {"wrong": stream.correction.wrong, "right": stream.correction.right,
                          "call": stream.corrected_call, "kind": stream.corrected_kind}
        return TaskRow(
            task_id=stream.task_id, words=stream.words, speech_s=stream.last_word_at,
            gold_calls=len(stream.calls), writes=sum(c.effect != "safe" for c in stream.calls),
            expected_hash=ref.db_hash, ideal_s=bound.post_turn_s, results=results,
            utterance=stream.utterance, correction=correction, correction_note=stream.note)

    async def _session(self, http: httpx.AsyncClient, stream: StreamTask, oracle: OracleTask,
                       mode: str, latency: ToolLatency, expected_hash: str, options: Options
                       ) -> ModeResult:
        seeder = self.prepared.seeder
        seeder.reset()
        clock = VirtualClock()
        gateway, trace = GatewayClient(http, clock), Trace(clock)
        backend = self._backend(mode, oracle, clock, options)
        config = AgentConfig(mode="sync" if mode == "baseline" else "speculative",
                             tool_latency=latency, tool_listing=options.tool_listing)
        result = ModeResult(mode)
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(run_session(
                gateway, backend, clock, _source(stream), config=config, trace=trace,
                metadata={"bench": "tau2", "task": stream.task_id, "mode": mode}),
                options.session_limit_s)
        except (AgentError, TimeoutError) as error:
            result.error = f"{type(error).__name__}: {error}"
            # what the model did before the session failed (a weak model's failures differ)
            result.steps = len(trace.of("generation_start"))
            result.interrupts = len(trace.of("interrupt"))
            result.model_errors = len(trace.of("model_error"))
        else:
            turn = outcome.turn
            result.post_turn_s = turn.post_turn_latency
            if turn.last_word_at is not None:
                result.post_turn_end_s = turn.answered_at - turn.last_word_at
            result.answered_at = turn.answered_at
            result.steps, result.interrupts = turn.steps, turn.interrupts
            result.model_errors = turn.errors
        result.wall_s = time.perf_counter() - started
        result.actions = dict(sorted(Counter(r["action"] for r in trace.of("action")).items()))
        await _count_calls(gateway, trace, stream, result)
        result.db_hash = seeder.db_hash()
        result.accurate = result.error is None and result.db_hash == expected_hash
        return result


def _source(stream: StreamTask) -> Source:
    return lambda clock: inputs.timed_chunks(clock, stream.chunks)


async def _count_calls(gateway: GatewayClient, trace: Trace, stream: StreamTask,
                       result: ModeResult) -> None:
    """Calls as the gateway ended them; those posted before the last word; wrong ones."""
    opened = trace.first("session")
    if opened is None:
        return
    session = await gateway.session(opened["session_id"])
    calls = [c for turn in session["turns"] for c in turn["calls"]]
    statuses = [c["status"] for c in calls]
    result.calls = {"issued": len(calls), "committed": statuses.count("committed"),
                    "cancelled": sum(s in ("cancelled", "conflict") for s in statuses),
                    "failed": statuses.count("failed")}
    result.issued_while_speaking = sum(r["t"] < stream.last_word_at
                                       for r in trace.of("call_posted"))
    if stream.correction is not None:
        wrong = [c for c in calls if stream.correction.wrong in literals(c["arguments"])]
        result.wrong_calls = len(wrong)
        result.wrong_writes = sum(c["effect"] != "safe" for c in wrong)
        result.wrong_committed = sum(c["status"] == "committed" for c in wrong)


def tool_effects(domain: str) -> dict[str, str]:
    """The gateway's effect class of each tool of the domain's adapter, by bare tool name."""
    from gateway.tools.registry import load_adapter

    return {t.name: str(t.effect) for t in load_adapter(domain).tools}


def gold_steps(ref: Any, effects: dict[str, str]) -> list[GoldStep]:
    """τ²'s replay of a task's gold actions (a ``ReferenceRun``) as the builder takes them."""
    return [GoldStep(s.name, s.arguments, s.ok, s.output, effects.get(s.name, "safe"))
            for s in ref.steps]


def plan(stream: StreamTask, latency: ToolLatency, model: LatencyProfile) -> ideal.Ideal:
    """The ideal bound of the task (``lab.tau2bench.ideal``), with the producers each
    call waits for (its dependencies)."""
    planned = [ideal.PlannedCall(
        c.call.id, tuple(ideal.Input(s.heard_at, s.producers, s.value) for s in c.sources),
        ideal.text_seconds(c.call, model), latency(c.call), c.after) for c in stream.calls]
    return ideal.ideal(planned, stream.last_word_at, model.ttft_s,
                       ideal.answer_seconds(stream.answer, model))


def _label(options: Options) -> str:
    who = options.profile if options.model is None else f"model {options.model.name}"
    return f"{options.domain} · {who}" + (" · corrections" if options.corrections else "")


@contextmanager
def harness(settings: Any, options: Options, console: Console | None = None
            ) -> Iterator[Harness]:
    """Prepare the domain (migrate, seed snapshot, key, tasks) and start the gateway."""
    from lab.bench.harness import machine_info
    from lab.conformance import run as conformance

    console = console or Console()
    settings = conformance.conformance_settings(settings, options.domain, options.home)
    with console.status(f"preparing the {options.domain} database…"):
        prepared = conformance.prepare(settings, conformance.Options(
            domain=options.domain, tasks=options.tasks, task_ids=options.task_ids,
            home=options.home))
    effects = tool_effects(options.domain)
    try:
        with conformance.gateway_server(settings, prepared.url,
                                        "bench-tau2-gateway.log") as gateway:
            bench = Harness(prepared, gateway.url, machine_info(prepared.url), effects,
                            options.domain)
            try:
                yield bench
            finally:
                bench.close()
    finally:
        prepared.seeder.close()


def run(settings: Any, options: Options, console: Console | None = None) -> dict[str, Any]:
    """Prepare, start the gateway, run the variant, print and write the report."""
    with harness(settings, options, console) as bench:
        return bench.run(options, console)


def main(options: Options, console: Console | None = None) -> int:
    """Entry of the CLI command; exit status 1 when a speculative run is less accurate than
    the baseline (or a run failed)."""
    from gateway.config import get_settings

    exit_on_sigterm()
    summary = run(get_settings(), options, console)["summary"]
    return 0 if summary["speculative_accurate"] >= summary["baseline_accurate"] else 1

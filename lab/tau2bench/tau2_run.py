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

The run's choices are ``lab.tau2bench.options``; what it measures, ``lab.tau2bench.results``,
which ``tau2_report`` sums up.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent_worker import inputs
from agent_worker.backends.oracle import OracleBackend, OracleTask, literals
from agent_worker.call_records import ToolLatency
from agent_worker.clock import VirtualClock
from agent_worker.errors import AgentError
from agent_worker.gateway_client import GatewayClient
from agent_worker.model import Backend, LatencyProfile
from agent_worker.runtime import AgentConfig
from agent_worker.session import Source, run_session, stable_latency
from agent_worker.trace import Trace
from gateway.children import exit_on_sigterm
from lab.tau2bench import ideal
from lab.tau2bench import tau2_report as report_module
from lab.tau2bench.gold import GoldStep
from lab.tau2bench.options import Options
from lab.tau2bench.options import options_from as options_from  # specgate.cli's name
from lab.tau2bench.results import ModeResult, TaskRow
from lab.tau2bench.tau2_stream import StreamTask, build


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

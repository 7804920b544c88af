"""``specgate bench resume``: what keeping the KV cache across an interruption saves, measured
side by side in one run on one machine.

The situation measured is the one the runtime creates at every interruption
(docs/architecture.md#agent-worker): the model was writing a step on a long context (the system
prompt with a τ² domain's tools, then the user's first words); new input arrives; the runtime stops
it, keeps what it wrote (closed here as a cut think, ``</think_interrupted>``), injects the new
words and starts a new step on the longer transcript. Two ways to start that step:

- **resume** — the local backend's kept cache: only the injected tokens (and the template's
  few) are prefilled;
- **scratch** — the same backend with its cache dropped: the whole context is prefilled.

Per context length and repetition: one step is written and cut after ``KEPT_DELTAS`` deltas,
then the next step runs both ways; each is timed to its first new token (wall time, the
backend's own ``ttft_s``) and writes ``PROBE_TOKENS`` tokens, which must be the same both ways
(the cache must not change the output). The context lengths are reached by listing more of
the retail (then airline) tools in the system prompt, so the text is the real prompt. One
untimed round warms the model up first. The first repetition's priming prefill is the only
full prefill of a length; later ones reuse what the scratch step left in the cache.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent_worker.model import Context
from agent_worker.prompt import system_prompt

if TYPE_CHECKING:
    from agent_worker.backends.local import LocalBackend

DEFAULT_LENGTHS = (1000, 2000, 3000)
DEFAULT_REPEATS = 5
KEPT_DELTAS = 8  # what the interrupted step wrote before the new words arrived
PROBE_TOKENS = 4  # written by each measured step, compared between the two ways
FIRST_WORDS = "<partial_query_update>Hi, this is Yusuf Rossi, I'd like to</partial_query_update>"
INJECTED = ("<partial_query_update>return the water bottle and the desk lamp from my last "
            "order</partial_query_update>")


@dataclass(frozen=True)
class Options:
    model_path: Path | None = None  # None: SmolLM2-135M-Instruct (weights.smollm2())
    device: str | None = None
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    repeats: int = DEFAULT_REPEATS
    out: Path | None = None
    threads: int | None = None  # torch's intra-op threads (None: torch's default)


@dataclass
class Sample:
    ttft_ms: float
    prefilled: int
    reused: int
    tokens: list[int]


@dataclass
class LengthResult:
    target: int
    context_tokens: int  # of the resumed step's rendering
    tools: int
    resume: list[Sample] = field(default_factory=list)
    scratch: list[Sample] = field(default_factory=list)

    def same_output(self) -> bool:
        return all(a.tokens == b.tokens for a, b in zip(self.resume, self.scratch, strict=True))

    def summary(self) -> dict[str, Any]:
        resume_ms = statistics.median(s.ttft_ms for s in self.resume)
        scratch_ms = statistics.median(s.ttft_ms for s in self.scratch)
        return {"target_tokens": self.target, "context_tokens": self.context_tokens,
                "tools": self.tools, "repeats": len(self.resume),
                "resume_p50_ms": resume_ms, "scratch_p50_ms": scratch_ms,
                "resume_prefilled": statistics.median(s.prefilled for s in self.resume),
                "scratch_prefilled": statistics.median(s.prefilled for s in self.scratch),
                "speedup": scratch_ms / resume_ms if resume_ms else float("inf"),
                "same_output": self.same_output()}


def parse_lengths(spec: str) -> tuple[int, ...]:
    """``"1000,2000,3000"`` → the context lengths in tokens (each at least 100)."""
    try:
        lengths = tuple(int(part) for part in spec.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"lengths {spec!r}: write token counts, e.g. 1000,2000,3000") from None
    if not lengths or any(n < 100 for n in lengths):
        raise ValueError(f"lengths {spec!r}: give one or more counts, each at least 100")
    return lengths


def tool_pool() -> list[dict[str, Any]]:
    """The retail then airline tools, as the gateway lists them (``adapter.tool``)."""
    from tool_adapters.airline import ADAPTER as AIRLINE
    from tool_adapters.retail import ADAPTER as RETAIL

    return [{**spec.public_schema(), "name": f"{adapter.name}.{spec.name}"}
            for adapter in (RETAIL, AIRLINE) for spec in adapter.tools]


def first_context(backend: LocalBackend, target: int) -> tuple[Context, int]:
    """The context before the interruption, with as many tools as reach ``target`` tokens of
    rendering (all of them if they do not), and the number of tools listed."""
    pool = tool_pool()
    context = Context("", ())
    for count in range(1, len(pool) + 1):
        context = Context(system_prompt(pool[:count]), (("user", FIRST_WORDS),))
        if _tokens(backend, context) >= target:
            return context, count
    return context, len(pool)


def resumed_context(first: Context, written: str) -> Context:
    """What the runtime builds after cutting a think: the kept text closed as interrupted,
    then the injected words."""
    return Context(first.system, (*first.segments,
                                  ("assistant", f"<think>{written}</think_interrupted>"),
                                  ("user", INJECTED)))


def _tokens(backend: LocalBackend, context: Context) -> int:
    return len(backend.tokenizer(backend.render(context), add_special_tokens=False)["input_ids"])


async def _write(backend: LocalBackend, context: Context, *, deltas: int = 0,
                 tokens: int = 0) -> str:
    """One step, closed after ``deltas`` deltas or ``tokens`` tokens, as the runtime closes
    an interrupted one; returns the text it wrote."""
    written: list[str] = []
    stream = backend.stream(context)
    try:
        async for delta in stream:
            written.append(delta)
            if len(written) >= deltas and backend.last.generated >= tokens:
                break
    finally:
        await stream.aclose()
    return "".join(written)


def _sample(backend: LocalBackend) -> Sample:
    step = backend.last
    assert step.ttft_s is not None
    return Sample(step.ttft_s * 1000, step.prefilled, step.reused, step.tokens[:PROBE_TOKENS])


async def _round(backend: LocalBackend, first: Context) -> tuple[Sample, Sample, int]:
    """Write and cut a step, then the next step resumed and from scratch."""
    written = await _write(backend, first, deltas=KEPT_DELTAS)
    second = resumed_context(first, written)
    await _write(backend, second, tokens=PROBE_TOKENS)
    resume = _sample(backend)
    backend.reset()
    await _write(backend, second, tokens=PROBE_TOKENS)
    return resume, _sample(backend), resume.reused + resume.prefilled


def measure(backend: LocalBackend, options: Options, progress: Progress) -> list[LengthResult]:
    results: list[LengthResult] = []
    task = progress.add_task("resume vs scratch", total=len(options.lengths) * options.repeats)
    for target in options.lengths:
        first, tools = first_context(backend, target)
        result = LengthResult(target, 0, tools)
        for _ in range(options.repeats):
            resume, scratch, total = asyncio.run(_round(backend, first))
            result.resume.append(resume)
            result.scratch.append(scratch)
            result.context_tokens = total
            progress.advance(task)
        results.append(result)
    return results


def table(results: list[LengthResult]) -> Table:
    out = Table(title="Time to the first token after an injection: KV cache kept vs "
                      "re-prefilled (p50 over repetitions)")
    for name in ("context tok", "tools", "resume prefill tok", "resume p50 ms",
                 "scratch prefill tok", "scratch p50 ms", "speedup", "same output"):
        out.add_column(name, justify="right")
    for result in results:
        s = result.summary()
        out.add_row(str(s["context_tokens"]), str(s["tools"]), f"{s['resume_prefilled']:.0f}",
                    f"{s['resume_p50_ms']:.0f}", f"{s['scratch_prefilled']:.0f}",
                    f"{s['scratch_p50_ms']:.0f}", f"{s['speedup']:.1f}×",
                    "yes" if s["same_output"] else "[red]NO[/]")
    return out


def run(options: Options, console: Console | None = None) -> list[LengthResult]:
    from agent_worker.local import weights

    console = console or Console()
    path = options.model_path or weights.smollm2()
    with weights.torch_threads(options.threads) as threads:
        results = _measure_model(path, options, console)
    console.print(table(results))
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report(results, options, str(path), threads),
                                          indent=2))
        console.print(f"wrote {options.out}")
    return results


def _measure_model(path: Path, options: Options, console: Console) -> list[LengthResult]:
    from agent_worker.backends.local import LocalBackend

    console.print(f"loading {path} …")
    backend = LocalBackend.load(path, device=options.device, max_new_tokens=64)
    try:
        with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            first, _ = first_context(backend, min(options.lengths))
            warm = progress.add_task("warm-up", total=1)
            asyncio.run(_round(backend, first))
            progress.advance(warm)
            return measure(backend, options, progress)
    finally:
        backend.close()


def report(results: list[LengthResult], options: Options, model: str,
           threads: int) -> dict[str, Any]:
    return {"model": model, "device": options.device or "auto", "torch_threads": threads,
            "kept_deltas": KEPT_DELTAS, "probe_tokens": PROBE_TOKENS, "injected": INJECTED,
            "lengths": [{**r.summary(), "resume": [asdict(s) for s in r.resume],
                         "scratch": [asdict(s) for s in r.scratch]} for r in results]}


def options_from(model_path: str | None, device: str | None, lengths: str, repeats: int,
                 out: str | None, threads: int | None = None) -> Options:
    """The command line's options, checked (``ValueError`` says what is wrong). Light to
    import and call: torch loads only when the benchmark runs."""
    from agent_worker.local import weights

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    try:
        path = weights.source(model_path).path if model_path else None
    except weights.WeightsError as error:
        raise ValueError(str(error)) from error
    return Options(path, device, parse_lengths(lengths), repeats, Path(out) if out else None,
                   threads)


def main(options: Options, console: Console | None = None) -> int:
    """Entry of the CLI command: 1 when a resumed step wrote other tokens than the same step
    from scratch (the cache changed the result), else 0."""
    results = run(options, console)
    return 0 if all(r.same_output() for r in results) else 1

"""``specgate data make``: timed training streams from τ²-bench and BFCL written as SFT chat
samples (the format is the contract with ``specgate train``, see ``sft_data``).

For every selected task of every source: its samples (``samples_per_task`` draws of word
timing, tool latency, wrong early calls and, for τ², correction streams), each played twice
through the agent runtime itself (``streams.simulate``: the real session loop on a virtual
clock, a scripted model and gateway at its edges): the speculative stream (``async``) and its
synchronous variant (``sync``). Every sample is checked before it is written (``check``):
roles alternate as the runtime's transcript does, every assistant message parses with
``StreamParser`` and passes the runtime's ``CallBook`` (ids grow, amends and removes name live
calls, nothing amended after the commit point), no call carries a value before it was heard or
observed (a deliberate wrong call aside), the calls standing at the end are exactly the gold
calls, and the last message is the answer. A sample failing a check, or a stream that cannot
be played, is left out and reported; so is a task without samples.

The split is by task (``sources.split``, per source), so every sample of a task, in both
variants, is on one side. Same options, same bytes: nothing in the files depends on the
machine or the wall clock (the summary's timing is only printed).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent_worker import protocol
from agent_worker.backends.oracle import literals, mentions
from agent_worker.prompt import ToolListing
from agent_worker.protocol import Answer, CallBook, Malformed, Pause, Remove, ToolCall
from agent_worker.session import latency_range
from lab.training import bfcl_source, tau2_source
from lab.training.sources import Options, listed, split
from lab.training.streams import Mode, SimulationError, Spec, Stream, call_key, simulate

ALL_SOURCES = ("tau2-retail", "tau2-airline", "bfcl")
VARIANTS: tuple[Mode, ...] = ("async", "sync")
LONG_TOKENS = (2048, 4096)


class Task(Protocol):
    """A task of a source (``tau2_source.Tau2Task``, ``bfcl_source.BfclTask``)."""

    @property
    def source(self) -> str: ...

    @property
    def key(self) -> str: ...

    def specs(self, options: Options) -> list[Spec] | str: ...


def load_tasks(source: str, count: int | None) -> list[Task]:
    if source in tau2_source.SOURCES:
        return list(tau2_source.load(source, count))
    if source == "bfcl":
        return list(bfcl_source.load(count))
    raise ValueError(f"unknown source {source!r}; choose from {', '.join(ALL_SOURCES)}")


# Checks ---------------------------------------------------------------------------------------

@dataclass
class _Reader:
    """What the model has seen so far in a sample, and the runtime's book of its calls."""

    book: CallBook
    heard: str = ""
    seen: str = ""
    final: bool = False
    committed: bool = False
    live: dict[int, ToolCall] = field(default_factory=dict)

    def user(self, text: str) -> None:
        for item in protocol.read_injected(text):
            if item.kind.endswith("query_update"):
                self.heard += " " + item.text
                self.final = self.final or item.kind == "final_query_update"
            elif item.kind == "observation":
                self.seen += item.text
            elif item.kind == "cancelled" and item.call_id is not None:
                self.live.pop(item.call_id, None)

    def action(self, element: Any, guesses: set[tuple[int, str]]) -> str | None:
        """Why the runtime or the alignment rule would refuse the action, or None."""
        if isinstance(element, Malformed):
            return element.message
        new_call = isinstance(element, ToolCall) and element.id > self.book.highest
        if self.final and not self.committed and (new_call or isinstance(element, Pause
                                                                           | Answer)):
            self.committed = True  # the commit point freezes every call issued before
            self.book.frozen |= self.book.issued
        if isinstance(element, ToolCall | Remove):
            problem = self.book.check(element)
            if problem:
                return problem
            self.book.record(element)
        if isinstance(element, Remove):
            self.live.pop(element.id, None)
        if isinstance(element, ToolCall):
            self.live[element.id] = element
            if (element.id, call_key(element.arguments)) not in guesses:
                return self._unheard(element)
        return None

    def _unheard(self, call: ToolCall) -> str | None:
        if self.final:
            return None
        unknown = [v for v in literals(call.arguments)
                   if not mentions(self.heard, v) and not mentions(self.seen, v)]
        return f"call {call.id} carries {unknown[0]!r} before it was heard" if unknown else None


def check(stream: Stream, spec: Spec) -> list[str]:
    """What is wrong with a sample (see the module docstring); empty when nothing."""
    messages = stream.messages
    roles = [m["role"] for m in messages]
    found = []
    if roles[:1] != ["system"] or roles[1::2] != ["user"] * len(roles[1::2]) \
            or roles[2::2] != ["assistant"] * len(roles[2::2]) or roles[-1] != "assistant":
        found.append("roles do not alternate user/assistant after the system prompt")
    guesses = {(w["id"], call_key(w["arguments"])) for w in stream.meta["wrong_calls"]}
    reader = _Reader(CallBook(tools={t["name"] for t in spec.tools}))
    for message in messages[1:]:
        if message["role"] == "user":
            reader.user(message["content"])
            continue
        elements = protocol.parse_all(message["content"])
        found += [p for e in elements if (p := reader.action(e, guesses))]
        acted = any(isinstance(e, ToolCall | Remove | Pause | Answer) for e in elements)
        if not acted and not message.get("interrupted"):
            found.append("an assistant message without an action")
    if not isinstance(protocol.parse_all(messages[-1]["content"])[-1], Answer):
        found.append("the sample does not end with the answer")
    kept = sorted((c.name, call_key(c.arguments)) for c in reader.live.values())
    if kept != sorted((c.name, call_key(c.arguments)) for c in spec.task.calls):
        found.append("the calls left standing are not the gold calls")
    return found


# Samples --------------------------------------------------------------------------------------

def sample(spec: Spec, task: Task, mode: Mode, options: Options) -> dict[str, Any]:
    """One checked sample line (``SimulationError`` when it cannot be played or is wrong)."""
    index = spec.meta["sample"]
    rng = random.Random(f"{options.seed}/{spec.key}/{index}/{mode}")
    spec = listed(spec, options.tools)
    stream = simulate(spec, mode, options.latency_profile, rng,
                      listing=cast(ToolListing, options.tool_listing))
    problems = check(stream, spec)
    if problems:
        raise SimulationError(f"{spec.key} {mode}: {'; '.join(problems[:3])}")
    return {"id": f"{spec.key}-{mode[0]}{index}", "task": task.key, "source": task.source,
            "variant": mode, "messages": stream.messages, "meta": stream.meta}


@dataclass
class _Tally:
    """Counts and lengths for the summary and the manifest."""

    counts: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)

    def add(self, line: dict[str, Any], side: str, length: int | None) -> None:
        source, variant, meta = line["source"], line["variant"], line["meta"]
        self.counts[f"{variant}/{side}"] += 1
        self.counts[f"{source}:{variant}"] += 1
        if variant == "async":
            self.counts[f"{source}:interrupted"] += sum(bool(m.get("interrupted"))
                                                        for m in line["messages"])
            for wrong in meta["wrong_calls"]:
                self.counts[f"{source}:wrong {wrong['fix']}"] += 1
            self.counts[f"{source}:corrections"] += bool(meta.get("correction"))
        if length is not None:
            self.tokens.setdefault(f"{source}:{variant}", []).append(length)


def _token_counter(name: str | None) -> Any:
    """A function counting a sample's tokens with the model's chat template, or None."""
    if not name or name == "none":
        return None
    from transformers import AutoTokenizer

    from agent_worker.local import weights

    path = weights.smollm2() if name == "smollm2" else weights.source(name).path
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def count(messages: list[dict[str, Any]]) -> int:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        text = tokenizer.apply_chat_template(plain, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


# The command ----------------------------------------------------------------------------------

def make(out: str | Path, sources: Sequence[str] = ALL_SOURCES, options: Options | None = None,
         *, test_fraction: float = 0.1, tasks: int | None = None,
         tokenizer: str | None = "smollm2", console: Console | None = None) -> dict[str, Any]:
    """Write the samples and the manifest under ``out``; returns the manifest. ``tokenizer``:
    "smollm2", a local model directory or None, to measure the samples in tokens."""
    options, console = options or Options(), console or Console()
    options.check()
    if tasks is not None and tasks < 1:
        raise ValueError(f"--tasks must be at least 1, got {tasks}")
    loaded = {source: load_tasks(source, tasks) for source in dict.fromkeys(sources)}
    sides: dict[str, str] = {}
    for of_source in loaded.values():
        train, test = split([t.key for t in of_source], test_fraction, options.seed)
        sides |= dict.fromkeys(train, "train") | dict.fromkeys(test, "test")
    counter = _token_counter(tokenizer)
    started = time.perf_counter()
    tally = _write(Path(out), [t for of_source in loaded.values() for t in of_source], sides,
                   options, counter, console)
    manifest = _manifest(list(loaded), options, sides, tally, test_fraction, tasks, tokenizer)
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    _summary(console, list(loaded), tally, time.perf_counter() - started)
    return manifest


def _write(out: Path, tasks: list[Task], sides: dict[str, str], options: Options,
           counter: Any, console: Console) -> _Tally:
    tally = _Tally()
    files = {f"{v}/{s}": out / v / f"{s}.jsonl" for v in VARIANTS for s in ("train", "test")}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    handles = {name: path.open("w", encoding="utf-8") for name, path in files.items()}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[samples]} samples"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("tasks", total=len(tasks), samples=0)
            for task in tasks:
                progress.update(bar, description=task.key)
                _task(task, sides[task.key], options, counter, handles, tally)
                progress.update(bar, advance=1, samples=sum(
                    tally.counts[f"{v}/{s}"] for v in VARIANTS for s in ("train", "test")))
    finally:
        for handle in handles.values():
            handle.close()
    return tally


def _task(task: Task, side: str, options: Options, counter: Any, handles: dict[str, Any],
          tally: _Tally) -> None:
    specs = task.specs(options)
    if isinstance(specs, str):
        tally.skipped[task.key] = specs
        return
    for spec in specs:
        try:  # both variants or neither: the baseline trains on the same samples
            lines = [sample(spec, task, mode, options) for mode in VARIANTS]
        except SimulationError as error:
            tally.failed[f"{spec.key}-{spec.meta['sample']}"] = str(error)
            continue
        for line in lines:
            handles[f"{line['variant']}/{side}"].write(
                json.dumps(line, ensure_ascii=False) + "\n")
            tally.add(line, side, counter(line["messages"]) if counter else None)


def _manifest(sources: list[str], options: Options, sides: dict[str, str], tally: _Tally,
              test_fraction: float, tasks: int | None, tokenizer: str | None) -> dict[str, Any]:
    counts = {f"{v}/{s}": tally.counts[f"{v}/{s}"] for v in VARIANTS for s in ("train", "test")}
    return {"seed": options.seed, "speech_wpm": options.wpm, "sources": sources,
            "split": {s: [k for k, side in sides.items() if side == s]
                      for s in ("train", "test")},
            "counts": counts, "parameters": {**asdict(options), "test_fraction": test_fraction,
                                             "tasks": tasks, "tokenizer": tokenizer},
            "skipped_tasks": tally.skipped, "failed_samples": tally.failed,
            "tokens": {key: _stats(values) for key, values in sorted(tally.tokens.items())}}


def _stats(values: list[int]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"samples": len(ordered), "median": statistics.median(ordered),
            "p90": ordered[int(0.9 * (len(ordered) - 1))], "max": ordered[-1],
            **{f"over_{n}": sum(v > n for v in ordered) for n in LONG_TOKENS}}


def _summary(console: Console, sources: list[str], tally: _Tally, seconds: float) -> None:
    table = Table(title=f"specgate data make — {seconds:.0f} s")
    for column in ("source", "async", "sync", "cut msgs", "wrong amend/remove", "corrections",
                   "tokens async med/p90/max", ">4096", "tokens sync med/max"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for source in sources:
        label = bfcl_source.SOURCE if source == "bfcl" else source
        c = tally.counts
        spread = [_brief(tally.tokens.get(f"{label}:{v}")) for v in VARIANTS]
        table.add_row(label, str(c[f"{label}:async"]), str(c[f"{label}:sync"]),
                      str(c[f"{label}:interrupted"]),
                      f"{c[f'{label}:wrong amend']}/{c[f'{label}:wrong remove']}",
                      str(c[f"{label}:corrections"]), spread[0][0], spread[0][1],
                      spread[1][0])
    console.print(table)
    console.print(f"{len(tally.skipped)} tasks skipped, {len(tally.failed)} samples left out "
                  "(reasons in manifest.json)")


def _brief(values: list[int] | None) -> tuple[str, str]:
    if not values:
        return "-", "-"
    s = _stats(values)
    return f"{s['median']:.0f}/{s['p90']}/{s['max']}", str(s["over_4096"])


def make_command(
        out: Annotated[Path, typer.Option(help="Directory for the JSON lines and manifest.")],
        sources: Annotated[str, typer.Option(
            help="Comma-separated: tau2-retail, tau2-airline, bfcl.")] = ",".join(ALL_SOURCES),
        seed: Annotated[int, typer.Option(help="Seed of every draw.")] = 0,
        samples_per_task: Annotated[int, typer.Option(help="Samples per task (per BFCL "
                                                           "turn).")] = 2,
        test_fraction: Annotated[float, typer.Option(help="Share of tasks held out.")] = 0.1,
        tasks: Annotated[int | None, typer.Option(
            help="Tasks per source, spread over its list (default: all).")] = None,
        wpm: Annotated[float, typer.Option(help="Speech rate, words/min.")] = 150.0,
        jitter: Annotated[float, typer.Option(help="Word length jitter, ±share.")] = 0.3,
        chunk_s: Annotated[float, typer.Option(help="Partial update length, s.")] = 0.5,
        profile: Annotated[str, typer.Option(help="Model cost: cloud, edge or instant.")
                           ] = "edge",
        tool_latency: Annotated[str, typer.Option(help="Seconds, e.g. 0.5-1.")] = "0.5-1",
        wrong_rate: Annotated[float, typer.Option(
            help="Chance a gold call with a spoken value gets a wrong early call.")] = 0.4,
        correction_rate: Annotated[float, typer.Option(
            help="Share of τ² samples spoken with a correction.")] = 0.25,
        tools: Annotated[str, typer.Option(
            help="System prompt tools: all (as the gateway lists them) or used (only those "
                 "the task's gold calls use: shorter, but not the inference prompt).")
                         ] = "all",
        tool_listing: Annotated[str, typer.Option(
            help="How the system prompt lists the tools: full (descriptions and JSON schemas) "
                 "or compact (one signature line each, ~4x shorter). Run the model with the "
                 "same.")] = "full",
        tokenizer: Annotated[str, typer.Option(
            help="Measure tokens with: smollm2, a model directory, or none.")] = "smollm2",
) -> None:
    """Timed SFT samples (speculative and synchronous) from τ²-bench and BFCL."""
    try:
        options = Options(seed=seed, samples_per_task=samples_per_task, wpm=wpm,
                          jitter=jitter, chunk_s=chunk_s, profile=profile,
                          tool_latency=latency_range(tool_latency), wrong_rate=wrong_rate,
                          correction_rate=correction_rate, tools=tools,
                          tool_listing=tool_listing)
        make(out, [s.strip() for s in sources.split(",") if s.strip()], options,
             test_fraction=test_fraction, tasks=tasks, tokenizer=tokenizer)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error

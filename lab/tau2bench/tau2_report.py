"""The τ² streaming benchmark's report: the summary, ``results.json``, ``results.md``,
``latency.png``, and the table printed at the end of a run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lab.tau2bench.options import Options
from lab.tau2bench.results import ModeResult, TaskRow

MODES = ("baseline", "speculative")
NOTES = [
    "post-turn latency: from the end of the user's last word to the start of the answer "
    "(to_end: to its end), in simulated time",
    "speedup = baseline / speculative post-turn latency, per task; median and p90 over the "
    "tasks (p90: the 90th percentile of the per-task speedups)",
    "ideal = the post-turn critical path with every call issued at the earliest moment its "
    "inputs are known (heard, or shown by an earlier read's result, or at the last word), "
    "each call costing one model step of its own, never interrupted; "
    "ideal_ratio = speculative / ideal",
    "accuracy: τ²'s own hash of the exported tables equals the hash of τ²'s replay of the "
    "gold actions; a run that failed counts as inaccurate",
    "clocks: speech (150 words/min, ~0.5 s chunks), the model (declared profile) and the "
    "tools (injected latency) cost simulated time; the gateway's real work (HTTP, ledger, "
    "held transactions, commits) and grading cost wall time only: the simulated clock stands "
    "still during each gateway request",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1), linear between order statistics; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _latencies(rows: Sequence[TaskRow], mode: str) -> dict[str, float | None]:
    start = [r.results[mode].post_turn_s for r in rows]
    end = [r.results[mode].post_turn_end_s for r in rows]
    starts = [v for v in start if v is not None]
    ends = [v for v in end if v is not None]
    return {"median": _ms(percentile(starts, 0.5)), "p90": _ms(percentile(starts, 0.9)),
            "to_end_median": _ms(percentile(ends, 0.5)), "to_end_p90": _ms(percentile(ends, 0.9))}


def _failure(task_id: str, mode: str, result: ModeResult) -> str:
    """A failed run in a line: the error, and what the model did before it."""
    did = ", ".join(f"{n} {action}" for action, n in result.actions.items()) or "no action"
    return (f"task {task_id} {mode}: {result.error or 'hash differs'} ({result.steps} steps, "
            f"{result.model_errors} malformed; {did})")


def _calls(rows: Sequence[TaskRow], mode: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row.results[mode].calls)
        total["issued_while_speaking"] += row.results[mode].issued_while_speaking
        total["interrupts"] += row.results[mode].interrupts
        total["model_errors"] += row.results[mode].model_errors
    return dict(total)


def _corrections(rows: Sequence[TaskRow]) -> dict[str, Any]:
    corrected = [r for r in rows if r.correction is not None]
    spec = [r.results["speculative"] for r in corrected]
    return {"tasks": len(corrected),
            "by_kind": dict(Counter(str(r.correction["kind"]) for r in corrected
                                    if r.correction is not None)),
            "without": dict(Counter(r.correction_note for r in rows if r.correction is None)),
            "tasks_with_wrong_calls": sum(m.wrong_calls > 0 for m in spec),
            "wrong_calls": sum(m.wrong_calls for m in spec),
            "wrong_writes": sum(m.wrong_writes for m in spec),
            "wrong_calls_committed": sum(m.wrong_committed for m in spec),
            "accurate": sum(m.accurate for m in spec)}


def summarize(rows: Sequence[TaskRow], options: Options, wall_s: float) -> dict[str, Any]:
    n = len(rows)
    accurate = {m: sum(r.results[m].accurate for r in rows) for m in MODES}
    speedups = [s for r in rows if (s := r.speedup) is not None]
    with_calls = [s for r in rows if r.gold_calls and (s := r.speedup) is not None]
    ratios = [x for r in rows if (x := r.ideal_ratio) is not None]
    summary: dict[str, Any] = {
        "domain": options.domain, "profile": options.profile,
        "model": None if options.model is None else str(options.model),
        "baseline_model": None if options.model_for("baseline") is None
        else str(options.model_for("baseline")),
        "corrections": options.corrections, "tool_latency_s": list(options.tool_latency),
        "seed": options.seed, "tasks": n, "tasks_with_calls": sum(r.gold_calls > 0 for r in rows),
        "baseline_accurate": accurate["baseline"],
        "speculative_accurate": accurate["speculative"],
        "baseline_accuracy": _round(accurate["baseline"] / n if n else None, 4),
        "speculative_accuracy": _round(accurate["speculative"] / n if n else None, 4),
        "speedup_tasks": len(speedups),
        "speedup_median": _round(percentile(speedups, 0.5)),
        "speedup_p90": _round(percentile(speedups, 0.9)),
        "speedup_median_tasks_with_calls": _round(percentile(with_calls, 0.5)),
        "post_turn_latency_ms": {m: _latencies(rows, m) for m in MODES},
        "ideal_post_turn_ms_median": _ms(percentile([r.ideal_s for r in rows], 0.5)),
        "ideal_ratio_median": _round(percentile(ratios, 0.5)),
        "ideal_ratio_p90": _round(percentile(ratios, 0.9)),
        "calls": {m: _calls(rows, m) for m in MODES},
        "wall_s": round(wall_s, 1),
        "session_wall_s": {m: round(sum(r.results[m].wall_s for r in rows), 1) for m in MODES},
        "simulated_s": {m: round(sum(r.results[m].answered_at or 0.0 for r in rows), 1)
                        for m in MODES},
        "failures": [_failure(r.task_id, m, r.results[m])
                     for r in rows for m in MODES if not r.results[m].accurate],
    }
    if options.corrections:
        summary["correction_streams"] = _corrections(rows)
    return summary


def row_json(row: TaskRow) -> dict[str, Any]:
    data = asdict(row)
    data["speedup"] = _round(row.speedup)
    data["ideal_ratio"] = _round(row.ideal_ratio)
    return data


def build(rows: Sequence[TaskRow], options: Options, machine: dict[str, Any],
          wall_s: float) -> dict[str, Any]:
    return {"benchmark": "specgate bench tau2",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": summarize(rows, options, wall_s), "notes": NOTES, "machine": machine,
            "rows": [row_json(r) for r in rows]}


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """``results.json``, ``results.md`` and ``latency.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "latency.png"]
    paths[0].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths


def _title(summary: dict[str, Any]) -> str:
    low, high = summary["tool_latency_s"]
    return (f"τ² {summary['domain']}, profile {summary['profile']}"
            f"{', with corrections' if summary['corrections'] else ''}, "
            f"tool latency U[{low:g}, {high:g}] s, {summary['tasks']} tasks")


def headline(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) pairs: the table printed and the one in ``results.md``."""
    lat = summary["post_turn_latency_ms"]
    rows = [
        ("tasks (with tool calls)", f"{summary['tasks']} ({summary['tasks_with_calls']})"),
        ("accuracy baseline / speculative",
         f"{summary['baseline_accurate']}/{summary['tasks']} / "
         f"{summary['speculative_accurate']}/{summary['tasks']}"),
        ("speedup median / p90", f"{summary['speedup_median']}× / {summary['speedup_p90']}×"),
        ("post-turn latency median, baseline → speculative",
         f"{lat['baseline']['median']} ms → {lat['speculative']['median']} ms"),
        ("… to the answer's end",
         f"{lat['baseline']['to_end_median']} ms → {lat['speculative']['to_end_median']} ms"),
        ("ideal bound median", f"{summary['ideal_post_turn_ms_median']} ms"),
        ("measured / ideal median (p90)",
         f"{summary['ideal_ratio_median']} ({summary['ideal_ratio_p90']})"),
    ]
    calls = summary["calls"]["speculative"]
    rows.append(("speculative calls: issued / committed / cancelled / failed",
                 f"{calls.get('issued', 0)} / {calls.get('committed', 0)} / "
                 f"{calls.get('cancelled', 0)} / {calls.get('failed', 0)}"))
    if "correction_streams" in summary:
        c = summary["correction_streams"]
        rows.append(("corrections: tasks / with wrong calls / wrong calls (writes) / "
                     "committed", f"{c['tasks']} / {c['tasks_with_wrong_calls']} / "
                     f"{c['wrong_calls']} ({c['wrong_writes']}) / {c['wrong_calls_committed']}"))
    rows.append(("simulated time of the sessions, baseline / speculative",
                 f"{summary['simulated_s']['baseline']} s / "
                 f"{summary['simulated_s']['speculative']} s"))
    rows.append(("wall time: whole run (sessions, baseline / speculative)",
                 f"{summary['wall_s']} s ({summary['session_wall_s']['baseline']} s / "
                 f"{summary['session_wall_s']['speculative']} s)"))
    return rows


def render(console: Console, report: dict[str, Any]) -> None:
    summary = report["summary"]
    table = Table(title=_title(summary), box=box.SIMPLE_HEAVY)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in headline(summary):
        table.add_row(name, value)
    console.print(table)
    for failure in summary["failures"][:20]:
        console.print(f"[red]{failure}[/]")


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    lines = [f"# specgate bench tau2 — {_title(summary)}", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in headline(summary)]
    lines += ["", "| task | words | calls | baseline ms | speculative ms | speedup | ideal ms "
              "| measured/ideal | accurate (b/s) | correction |", "|" + "---|" * 10]
    for row in report["rows"]:
        base, spec = row["results"]["baseline"], row["results"]["speculative"]
        fix = row["correction"]
        said = f"{fix['wrong']} → {fix['right']} ({fix['kind']})" if fix else ""
        lines.append(
            f"| {row['task_id']} | {row['words']} | {row['gold_calls']} "
            f"| {_ms(base['post_turn_s'])} | {_ms(spec['post_turn_s'])} | {row['speedup']} "
            f"| {_ms(row['ideal_s'])} | {row['ideal_ratio']} "
            f"| {'✓' if base['accurate'] else '✗'}/{'✓' if spec['accurate'] else '✗'} "
            f"| {said} |")
    lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Per task (sorted by the baseline's latency): baseline and speculative post-turn latency
    and the ideal bound; below, the per-task speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    summary = report["summary"]
    rows = sorted((r for r in report["rows"]
                   if r["results"]["baseline"]["post_turn_s"] is not None),
                  key=lambda r: r["results"]["baseline"]["post_turn_s"])
    x = list(range(1, len(rows) + 1))
    base = [r["results"]["baseline"]["post_turn_s"] for r in rows]
    spec = [r["results"]["speculative"]["post_turn_s"] for r in rows]
    bound = [r["ideal_s"] for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), height_ratios=(3, 1.3),
                                         sharex=True, constrained_layout=True)
    top.vlines(x, [s if s is not None else b for s, b in zip(spec, base, strict=True)], base,
               color="#cccccc", linewidth=1, zorder=1)
    top.scatter(x, base, s=22, color="#d62728", label="baseline (synchronous)", zorder=3)
    top.scatter(x, [s if s is not None else float("nan") for s in spec], s=22,
                color="#1f77b4", label="speculative", zorder=3)
    top.scatter(x, bound, s=90, marker="_", color="#2ca02c", linewidths=2,
                label="ideal bound (every call at its earliest moment)", zorder=4)
    top.set_ylabel("post-turn latency (s)\nlast word → answer start")
    top.set_ylim(bottom=0)
    top.grid(axis="y", alpha=0.3)
    top.legend(loc="upper left")
    top.set_title(_title(summary) + f"\nspeedup median {summary['speedup_median']}×, "
                  f"p90 {summary['speedup_p90']}×; measured/ideal median "
                  f"{summary['ideal_ratio_median']}", fontsize=11)
    speedups = [r["speedup"] if r["speedup"] is not None else float("nan") for r in rows]
    bottom.bar(x, speedups, color="#1f77b4", width=0.8)
    if max((s for s in speedups if s == s), default=1.0) > 8:  # NaN != NaN
        bottom.set_yscale("log")
    else:
        bottom.set_ylim(0, None)
    bottom.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    bottom.yaxis.set_minor_formatter(ticker.NullFormatter())
    bottom.axhline(1.0, color="black", linewidth=0.8)
    if summary["speedup_median"] is not None:
        bottom.axhline(summary["speedup_median"], color="#ff7f0e", linestyle="--",
                       linewidth=1.2, label=f"median {summary['speedup_median']}×")
        bottom.legend(loc="upper left")
    bottom.set_ylabel("speedup")
    bottom.set_xlabel("task, sorted by the baseline's latency")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)

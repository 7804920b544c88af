"""The conformance run's report: one summary line per domain, the failures, and the JSON."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lab.conformance.reference import ReferenceRun
from lab.conformance.replay import TaskResult


@dataclass(frozen=True)
class SeedFigures:
    loaded: bool  # the snapshot was (re)built in this run
    load_s: float
    full_reset_s: float  # refilling every table
    matches_tau2: bool  # the seeded tables hash like τ²'s own seed


@dataclass
class Report:
    domain: str
    speculative: bool
    counted: int
    skipped: dict[str, str]  # task id → why its gold replay is not a valid reference
    results: list[TaskResult]
    seed: SeedFigures
    seconds: float
    reference_wait_s: float  # waiting for τ²'s replays, computed alongside in a process
    machine: dict[str, Any]  # what the seconds were measured on (``bench.harness.machine_info``)
    errors_at: dict[str, int] = field(default_factory=dict)  # reference errors: where shown

    @property
    def hash_matches(self) -> int:
        return sum(r.hash_match for r in self.results)

    @property
    def error_mismatches(self) -> int:
        return sum(len(r.mismatches) for r in self.results)

    @property
    def failures(self) -> list[TaskResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return self.seed.matches_tau2 and not self.failures

    def seed_ms(self) -> list[float]:
        return [r.seed_s * 1000 for r in self.results]

    def wrong_calls(self) -> Counter[str]:
        return Counter(w.status for r in self.results for w in r.wrong_calls)

    def leaked(self) -> int:
        return sum(len(r.leaked) for r in self.results)

    def summary_line(self) -> str:
        label = f"{self.domain}{' (speculative)' if self.speculative else ''}"
        parts = [f"{self.hash_matches}/{self.counted} hash match",
                 f"{self.error_mismatches} error-text mismatches"]
        if self.speculative:
            wrong = self.wrong_calls()
            kinds = ", ".join(f"{n} {status}" for status, n in sorted(wrong.items()))
            parts.append(f"{sum(wrong.values())} wrong early calls amended ({kinds}), "
                         f"{self.leaked()} leaked")
        seed = self.seed_ms()
        parts.append(f"seeding {statistics.fmean(seed) if seed else 0:.0f} ms/task")
        parts.append(f"{self.seconds:.0f} s")
        return f"{label}: " + ", ".join(parts)


def build(domain: str, speculative: bool, references: list[ReferenceRun],
          results: list[TaskResult], seed: SeedFigures, seconds: float,
          reference_wait_s: float, machine: dict[str, Any]) -> Report:
    skipped = {r.task_id: r.problem for r in references if r.problem is not None}
    by_id = {r.task_id: r for r in references}
    errors_at = Counter(step.where for result in results
                        for step, expected in zip(result.steps, by_id[result.task_id].steps,
                                                  strict=False)
                        if not expected.ok and step.where)
    return Report(domain, speculative, len(references) - len(skipped), skipped, results, seed,
                  seconds, reference_wait_s, machine, dict(errors_at))


def render(console: Console, report: Report) -> None:
    if not report.seed.matches_tau2:
        console.print("[red]the seeded tables do not hash like τ²'s own seed: the adapter's "
                      "loader or export differs from τ²'s db.json[/]")
    for task_id, problem in report.skipped.items():
        console.print(f"[yellow]skipped[/] task {task_id}: not a valid reference ({problem})")
    if report.failures:
        table = Table(box=box.SIMPLE_HEAD, title=f"{report.domain}: failures")
        table.add_column("task")
        table.add_column("hash")
        table.add_column("first difference", overflow="fold")
        for result in report.failures:
            table.add_row(result.task_id, "match" if result.hash_match else "differs",
                          result.first_difference())
        console.print(table)
    seed = report.seed_ms()
    console.print(
        f"seed snapshot {'built' if report.seed.loaded else 'reused'} in "
        f"{report.seed.load_s:.2f} s; full reset {report.seed.full_reset_s * 1000:.0f} ms; "
        f"per task median {statistics.median(seed) if seed else 0:.0f} ms, "
        f"max {max(seed, default=0):.0f} ms; waited {report.reference_wait_s:.1f} s for τ²'s "
        "replays; "
        f"reference errors shown at issue {report.errors_at.get('issue', 0)}, "
        f"at commit {report.errors_at.get('commit', 0)}", soft_wrap=True)
    style = "green" if report.ok else "red"
    console.print(f"[bold {style}]{report.summary_line()}[/]", soft_wrap=True)


def as_dict(report: Report) -> dict[str, Any]:
    seed = report.seed_ms()
    return {
        "domain": report.domain,
        "speculative": report.speculative,
        "created_at": datetime.now(UTC).isoformat(),
        "machine": report.machine,
        "summary": report.summary_line(),
        "ok": report.ok,
        "counted": report.counted,
        "hash_matches": report.hash_matches,
        "error_mismatches": report.error_mismatches,
        "reference_errors_shown_at": report.errors_at,
        "wrong_early_calls": dict(report.wrong_calls()),
        "leaked_wrong_calls": report.leaked(),
        "skipped": report.skipped,
        "seconds": round(report.seconds, 3),
        "reference_wait_seconds": round(report.reference_wait_s, 3),
        "seeding": {**asdict(report.seed),
                    "mean_ms_per_task": round(statistics.fmean(seed), 2) if seed else None,
                    "median_ms_per_task": round(statistics.median(seed), 2) if seed else None},
        "failures": [{"task_id": r.task_id, "first_difference": r.first_difference()}
                     for r in report.failures],
        "tasks": [_task_dict(r) for r in report.results],
    }


def _task_dict(result: TaskResult) -> dict[str, Any]:
    return {
        "task_id": result.task_id,
        "passed": result.passed,
        "hash_match": result.hash_match,
        "db_hash": result.db_hash,
        "expected_hash": result.expected_hash,
        "problem": result.problem,
        "difference": result.difference,
        "mismatches": [asdict(m) for m in result.mismatches],
        "steps": [asdict(s) for s in result.steps],
        "wrong_calls": [asdict(w) for w in result.wrong_calls],
        "seed_ms": round(result.seed_s * 1000, 2),
        "seconds": round(result.seconds, 3),
    }


def write(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_dict(report), indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")

"""The benchmark's report: derived figures and targets, the rich table, and the JSON file."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lab.bench.stats import Summary

LABELS = {
    "direct": "direct get_order",
    "http_floor": "HTTP floor (GET /v1/tools)",
    "http_floor_httpx": "HTTP floor, httpx client",
    "safe": "safe call (get_order)",
    "reversible": "held call (add_item)",
    "commit": "commit, 5 held calls",
    "plain_celery": "plain Celery (shipping_quote)",
    "task": "task call (shipping_quote)",
}
OVERHEAD_LABEL = "overhead safe−direct"
TASK_OVERHEAD_LABEL = "overhead task−plain"
OVERHEAD_TARGET_MS = 2.0
COMMIT_TARGET_MS = 10.0
JSON_NAME = "bench_gateway.json"
NOTES = [
    "client, gateway and Postgres share this machine's CPUs: at high concurrency the "
    "client's own work competes with what it measures",
    "direct = the tool function in this process (pooled connection, read-only transaction, "
    "rolled back); the others = HTTP on loopback to a real gateway, keep-alive, one "
    "connection and one thread per session, through the standard library's http.client",
    "HTTP floor = an authenticated GET /v1/tools (no database): what the web stack and the "
    "client cost per request on this machine, part of every gateway figure below it; the "
    "httpx row is the same request through httpx: the difference is what that client "
    "library adds to each request (not the gateway's overhead, so not in the rows below)",
    "calls/s = sessions / mean latency (closed loop, Little's law)",
    "targets are per-call costs, checked at 1 session: with more sessions than the 2 cores, "
    "every latency is mostly the wait for a core (sessions / calls/s)",
    "each session adds its own product (session 1: 'filter', the others a copy of it): a held "
    "add_item locks its product row until commit, so a shared one would measure that queue",
    "gw CPU = the gateway process's CPU per measured operation, including the untimed "
    "requests of its step (a turn commit + reopen every 5 calls; for a commit, its 5 "
    "add_items and the reopen)",
    "task call = demo.shipping_quote through the gateway with ?wait= (ledger row and outbox, "
    "published to the broker, run by a separate worker process, result back through the "
    "ledger); plain Celery = the same function on the same broker and worker, send_task + "
    "AsyncResult.get(interval=5 ms) from this process, no gateway and no ledger",
    "with no broker configured, the broker is the ledger's Postgres through kombu's SQL "
    "transport, which the worker polls every 20 ms: most of both task figures is that wait; "
    "the plain baseline's db result backend also opens a new connection per poll and per "
    "stored result (Celery's way outside a forked worker): that is most of its client CPU "
    "(line above), and at concurrency its polls compete with the worker for the CPUs",
    "the worker runs one thread per session (largest concurrency), so no call waits for a "
    "free one; tool worker CPU (line above) = the worker process's CPU per task call",
]


def _by(summaries: list[Summary], scenario: str) -> dict[int, Summary]:
    return {s.sessions: s for s in summaries if s.scenario == scenario}


def derived(summaries: list[Summary]) -> dict[str, list[dict[str, Any]]]:
    """Gateway overhead (safe p50 − direct p50), the commit target, and the task runner's
    overhead over plain Celery (task p50 − plain p50, no target), per concurrency."""
    direct, safe, commit = (_by(summaries, k) for k in ("direct", "safe", "commit"))
    plain, task = _by(summaries, "plain_celery"), _by(summaries, "task")
    overhead = [_checked(n, safe[n].p50_ms - direct[n].p50_ms, OVERHEAD_TARGET_MS)
                for n in sorted(set(direct) & set(safe))]
    commits = [_checked(n, c.p50_ms, COMMIT_TARGET_MS) for n, c in sorted(commit.items())]
    task_overhead = [{"sessions": n, "p50_ms": task[n].p50_ms - plain[n].p50_ms}
                     for n in sorted(set(plain) & set(task))]
    return {"gateway_overhead": overhead, "commit_5_held": commits,
            "task_overhead": task_overhead}


def _checked(sessions: int, p50_ms: float, target_ms: float) -> dict[str, Any]:
    """A derived figure, with its target where one applies: the targets are per-call costs, so
    they are checked alone (1 session). With more sessions than cores every latency is mostly
    the wait for a core (sessions / throughput, Little's law), whatever the gateway does."""
    entry: dict[str, Any] = {"sessions": sessions, "p50_ms": p50_ms}
    if sessions == 1:
        entry.update(target_ms=target_ms, ok=p50_ms <= target_ms)
    return entry


def build(summaries: list[Summary], machine: dict[str, Any], options: dict[str, Any], *,
          orders: list[str], committed_adds: int) -> dict[str, Any]:
    """The whole report as JSON-ready data (also what ``run_benchmark`` returns)."""
    return {
        "benchmark": "gateway",
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": machine,
        "options": options,
        "results": [s.as_dict() for s in summaries],
        "derived": derived(summaries),
        "orders": orders,
        "held_add_items_committed": committed_adds,
        "notes": NOTES,
    }


def _ms(value: float | None) -> str:
    """One decimal below 100 ms; above, a tenth of a millisecond is noise and would widen the
    table past 80 columns (task calls at concurrency reach seconds)."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _mark(entry: dict[str, Any]) -> str:
    if "target_ms" not in entry:
        return ""
    sign = "[green]✓[/]" if entry["ok"] else "[red]✗[/]"
    return f"≤{entry['target_ms']:g}ms {sign}"


def _table() -> Table:
    table = Table(title="specgate bench gateway (latency in ms)", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False)
    table.add_column("scenario", no_wrap=True)
    for name in ("sess", "n", "p50", "p99", "calls/s", "gw CPU"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("target", no_wrap=True)
    return table


def _rows(table: Table, result: dict[str, Any]) -> None:
    commit_marks = {e["sessions"]: _mark(e) for e in result["derived"]["commit_5_held"]}
    for scenario, label in LABELS.items():
        rows = [r for r in result["results"] if r["scenario"] == scenario]
        for i, r in enumerate(rows):
            target = commit_marks.get(r["sessions"], "") if scenario == "commit" else ""
            table.add_row(label if i == 0 else "", str(r["sessions"]), str(r["n"]),
                          _ms(r["p50_ms"]), _ms(r["p99_ms"]), f"{r['calls_per_s']:.0f}",
                          _ms(r["server_cpu_ms_per_call"]), target,
                          end_section=i == len(rows) - 1)
    overheads = result["derived"]["gateway_overhead"]
    for i, e in enumerate(overheads):
        table.add_row(OVERHEAD_LABEL if i == 0 else "", str(e["sessions"]), "",
                      _ms(e["p50_ms"]), "", "", "", _mark(e),
                      end_section=i == len(overheads) - 1)
    for i, e in enumerate(result["derived"]["task_overhead"]):
        table.add_row(TASK_OVERHEAD_LABEL if i == 0 else "", str(e["sessions"]), "",
                      _ms(e["p50_ms"]), "", "", "", "")


def render(console: Console, result: dict[str, Any]) -> None:
    """One table: each scenario at each concurrency, then the derived overheads, then notes."""
    table = _table()
    _rows(table, result)
    console.print(table)
    m = result["machine"]
    console.print(f"[dim]{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, "
                  f"Postgres {m['postgres']}; client CPU per call: "
                  f"{_client_cpu(result)}; tool worker CPU per call: {_worker_cpu(result)}[/]")
    for note in NOTES:
        console.print(f"[dim]• {note}[/]")


def _client_cpu(result: dict[str, Any]) -> str:
    """The benchmark process's CPU per call of a gateway call and of a plain Celery one, by
    concurrency (what it took from the gateway, the worker and Postgres)."""
    parts = [f"{r['client_cpu_ms_per_call']:.1f} ms ({r['scenario']} ×{r['sessions']})"
             for r in result["results"] if r["scenario"] in ("safe", "plain_celery")]
    return ", ".join(parts)


def _worker_cpu(result: dict[str, Any]) -> str:
    """The tool worker's CPU per call of the two task scenarios: where their cost goes."""
    parts = [f"{_ms(r['worker_cpu_ms_per_call'])} ms ({r['scenario']} ×{r['sessions']})"
             for r in result["results"] if r.get("worker_cpu_ms_per_call") is not None]
    return ", ".join(parts) or "–"


def write(result: dict[str, Any], out: Path) -> Path:
    """Write the report as ``<out>/bench_gateway.json``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path

"""``specgate bench scale``'s report: one table with a column per topology and its ratio to the
smallest one, the statements per turn and the waiting statements with ``--verbose``, and the
JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

JSON_NAME = "bench_scale.json"
NO_STATEMENTS = "n/a (no pg_stat_statements)"
STATEMENTS_LABEL = "SQL statements/turn"
TOOLS_LABEL = "  the tools' own"
GATEWAY_LABEL = "  the gateway's"
BACKGROUND_LABEL = "idle gateways' SQL/s"
VERBOSE_STATEMENTS = 15
NOTES = [
    "a turn = open turn, 3 reversible calls (create_order, add_item ×2), 1 sensitive "
    "(place_order, staged), commit: 6 requests, each on a new connection to the round-robin "
    "balancer, so most reach a gateway that forwards them to the session's owner",
    "CPU per turn = the processes' CPU time over the measured window / turns: the gateways' "
    "(summed), Postgres' (the postmaster and every backend, exited ones included, less the "
    "lock sampler's backend) and this process's (the clients and the balancer); cores busy = "
    "the same CPU time / wall time; the whole machine's row counts every process: the "
    "difference is other work on this machine, which the run shared the cores with",
    "statements per turn = pg_stat_statements calls in the gateways' database during the "
    "window, less what the idle gateways ran in as long (the idle window before it: heartbeats "
    "and the reaper, shown per second), / turns; top-level statements only (not those a "
    "database function or a foreign-key check runs inside them); the tools' own = those naming "
    "the demo shop's tables (the adapter's queries), the gateway's = the rest",
    "lock waiters = backends of the gateways' database with wait_event_type 'Lock', sampled "
    "every 50 ms: mean per sample, and the share of samples with at least one; by wait_event "
    "(transactionid or tuple: a row lock; advisory: an advisory lock)",
    "held turns = sessions opened one by one on fresh gateways, each with one held "
    "create_order, until every gateway refused (429/503: SPECGATE_MAX_HELD_TRANSACTIONS each) "
    "or the cap; Postgres memory per held turn = the change of the server processes' summed "
    "USS (private) and PSS (shared pages split between their users) / held turns",
    "everything shares this machine's CPUs: with more busy processes than cores, a ratio shows "
    "what the machine, not the design, allows",
]

Cell = Callable[[dict[str, Any]], float | None]


def build(topologies: list[dict[str, Any]], machine: dict[str, Any],
          options: dict[str, Any]) -> dict[str, Any]:
    """The whole report as JSON-ready data (NaN, from a window without turns, becomes null)."""
    return _finite({
        "benchmark": "scale",
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": machine,
        "options": options,
        "topologies": topologies,
        "notes": NOTES,
    })


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write(result: dict[str, Any], out: Path) -> Path:
    """Write the report as ``<out>/bench_scale.json``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _statement(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda t: None if t["statements"] is None else t["statements"][key]


def _rows() -> list[tuple[str, Cell, int, bool]]:
    """(label, value of a topology, decimals, show the ratio to the first topology)."""
    return [
        ("turns/s", lambda t: t["turns_per_s"], 1, True),
        ("turn p50, ms", lambda t: t["turn_p50_ms"], 1, True),
        ("turn p99, ms", lambda t: t["turn_p99_ms"], 1, True),
        ("gateway CPU/turn, ms", lambda t: t["gateway_cpu_ms_per_turn"], 2, True),
        ("Postgres CPU/turn, ms", lambda t: t["postgres_cpu_ms_per_turn"], 2, True),
        ("client+balancer CPU/turn, ms", lambda t: t["bench_cpu_ms_per_turn"], 2, True),
        (STATEMENTS_LABEL, _statement("per_turn"), 1, True),
        (TOOLS_LABEL, _statement("tools_per_turn"), 1, True),
        (GATEWAY_LABEL, lambda t: None if t["statements"] is None else
         t["statements"]["per_turn"] - t["statements"]["tools_per_turn"], 1, True),
        (BACKGROUND_LABEL, _statement("background_per_s"), 1, True),
        ("lock waiters, mean", lambda t: t["locks"]["mean_waiting"], 2, False),
        ("samples with a waiter, %", lambda t: 100 * t["locks"]["share_with_waiter"], 1, False),
    ]


def _held_rows() -> list[tuple[str, Cell, int, bool]]:
    return [
        ("held-turn ceiling", lambda t: t["held"]["ceiling"], 0, True),
        ("Postgres USS/held turn, MB", lambda t: t["held"]["postgres_uss_mb_per_turn"], 2,
         True),
        ("Postgres PSS/held turn, MB", lambda t: t["held"]["postgres_pss_mb_per_turn"], 2,
         True),
        ("Postgres processes/held turn", lambda t: t["held"]["postgres_processes_per_turn"],
         2, False),
    ]


def _cells(topologies: list[dict[str, Any]], value: Cell, digits: int,
           ratio: bool) -> list[str]:
    values = [value(t) for t in topologies]
    base = values[0]
    cells = []
    for i, v in enumerate(values):
        cell = _number(v, digits)
        if ratio and i and v is not None and base:
            cell += f" [dim](×{v / base:.2f})[/]"
        cells.append(cell)
    return cells


def _gateways(n: int) -> str:
    return f"{n} gateway" + ("s" if n > 1 else "")


def table(result: dict[str, Any]) -> Table:
    """The figures, one column per topology; ratios are to the first (smallest) one."""
    topologies = result["topologies"]
    options = result["options"]
    window = (f"{options['seconds']:g} s" if options["seconds"] is not None
              else f"{options['turns_per_client']} turns each")
    grid = Table(title=f"specgate bench scale ({options['clients']} clients, {window})",
                 title_justify="left",
                 box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False)
    grid.add_column("figure", no_wrap=True, min_width=28)
    for t in topologies:
        grid.add_column(_gateways(t["gateways"]), justify="right")
    statements = all(t["statements"] is not None for t in topologies)
    for label, value, digits, ratio in _rows():
        if not statements and label in (STATEMENTS_LABEL, TOOLS_LABEL, GATEWAY_LABEL,
                                        BACKGROUND_LABEL):
            grid.add_row(label, *[NO_STATEMENTS] * len(topologies))
            continue
        grid.add_row(label, *_cells(topologies, value, digits, ratio))
    events = sorted({e for t in topologies for e in t["locks"]["by_event"]})
    for event in events:
        grid.add_row(f"  on {event}, mean",
                     *_cells(topologies, _event(event), 3, False))
    grid.add_row("cores busy: gw+pg+client",
                 *[_cores(t["cores_busy"]) for t in topologies])
    grid.add_row("cores busy: whole machine",
                 *[_number(t["cores_busy"]["machine"], 2) for t in topologies])
    grid.add_row("refused requests (429/503)",
                 *[str(sum(t["refused"].values())) for t in topologies])
    grid.add_row("errors", *[str(t["errors"]) for t in topologies], end_section=True)
    for label, value, digits, ratio in _held_rows():
        grid.add_row(label, *_cells(topologies, value, digits, ratio))
    grid.add_row("held probe stopped by",
                 *[_ended(t["held"]) for t in topologies])
    return grid


def _event(event: str) -> Cell:
    return lambda t: float(t["locks"]["by_event"].get(event, 0.0))


def _cores(busy: dict[str, float]) -> str:
    return "+".join(f"{busy[k]:.2f}" for k in ("gateways", "postgres", "bench"))


def _ended(held: dict[str, Any]) -> str:
    if held["stopped_by"] == "cap":
        return f"cap of {held['cap']}"
    return ", ".join(f"{count}× {label.split()[0]}" for label, count in held["refused"].items())


def _query_table(result: dict[str, Any], entries: Callable[[dict[str, Any]], Any],
                 field: str, title: str, digits: int = 2,
                 limit: int | None = None) -> Table | None:
    """One row per query, one column per topology: ``field`` of each of a topology's
    ``entries`` (None without them), the largest first."""
    topologies = result["topologies"]
    if any(entries(t) is None for t in topologies):
        return None
    per: dict[str, list[float]] = {}
    for i, t in enumerate(topologies):
        for entry in entries(t):
            per.setdefault(entry["query"], [0.0] * len(topologies))[i] = entry[field]
    if not per:
        return None
    grid = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD,
                 padding=(0, 0, 0, 1), show_edge=False)
    grid.add_column("statement", overflow="fold", max_width=70)
    for t in topologies:
        grid.add_column(_gateways(t["gateways"]), justify="right", no_wrap=True)
    for query, values in sorted(per.items(), key=lambda kv: -max(kv[1]))[:limit]:
        grid.add_row(_short(query), *[f"{v:.{digits}f}" for v in values])
    return grid


def statements_table(result: dict[str, Any]) -> Table | None:
    """The statements that most turns ran, per turn in each topology (``--verbose``)."""
    return _query_table(result, _statement("top"), "per_turn",
                        "statements per turn (pg_stat_statements, idle rate left out)",
                        limit=VERBOSE_STATEMENTS)


def background_table(result: dict[str, Any]) -> Table | None:
    """What the idle gateways ran, per second (``--verbose``)."""
    return _query_table(result, _statement("background_top"), "per_s",
                        "statements of the idle gateways, per second")


def waiting_table(result: dict[str, Any]) -> Table | None:
    """The statements seen waiting for a lock, mean waiters per sample (``--verbose``)."""
    return _query_table(result, lambda t: t["locks"]["top_waiting_queries"], "mean_waiting",
                        "statements waiting for a lock (mean waiters per sample)", digits=3)


def _short(query: str, length: int = 140) -> str:
    return query if len(query) <= length else query[: length - 1] + "…"


def render(console: Console, result: dict[str, Any], verbose: bool = False) -> None:
    """The table, the machine, errors if any, the notes; with ``verbose`` the statements."""
    console.print(table(result))
    m, options = result["machine"], result["options"]
    console.print(f"[dim]{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, "
                  f"Postgres {m['postgres']} ({options['postgres']}); "
                  f"SPECGATE_MAX_HELD_TRANSACTIONS={options['max_held_transactions']}, "
                  f"SPECGATE_REQUEST_THREADS={options['request_threads']}[/]")
    for t in result["topologies"]:
        for sample in t["error_samples"]:
            console.print(f"[red]{_gateways(t['gateways'])}: {sample}[/]")
    if verbose:
        for extra in (statements_table(result), background_table(result),
                      waiting_table(result)):
            if extra is not None:
                console.print(extra)
    for note in NOTES:
        console.print(f"[dim]• {note}[/]")

"""What the gateways ask of Postgres during a phase: the statements they run
(``pg_stat_statements``) and how often their backends wait for a lock (``pg_stat_activity``,
sampled).

Both read from the admin database on connections of their own, and count only the gateways'
database: the benchmark's sampling queries run elsewhere and are not counted. The sampler's own
backend costs the server a little CPU; it reports that, so the server's CPU per turn can leave it
out.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

SAMPLE_EVERY_S = 0.05
TOP_QUERIES = 8


@dataclass(frozen=True)
class Statement:
    """One normalised statement's calls in the window (``pg_stat_statements``' text)."""

    queryid: int
    query: str
    calls: int


class Statements:
    """Resets and reads ``pg_stat_statements`` for one database."""

    def __init__(self, conninfo: str, database: str) -> None:
        self.database = database
        self._conn = psycopg.connect(conninfo, autocommit=True)

    def reset(self) -> None:
        self._conn.execute("SELECT pg_stat_statements_reset()")

    def read(self) -> dict[int, Statement]:
        """Calls since the last reset, by query id."""
        rows = self._conn.execute(
            "SELECT s.queryid, min(s.query), sum(s.calls) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
            "GROUP BY s.queryid", (self.database,)).fetchall()
        return {int(qid or 0): Statement(int(qid or 0), _one_line(str(text)), int(calls))
                for qid, text, calls in rows}

    def close(self) -> None:
        self._conn.close()


def _one_line(query: str) -> str:
    return re.sub(r"\s+", " ", query).strip()


def net_calls(window: dict[int, Statement], background: dict[int, Statement],
              window_s: float, background_s: float) -> dict[int, Statement]:
    """The window's calls less what the idle gateways run in as long (each statement's idle
    rate times the window), never below zero: what the turns themselves asked for."""
    net = {}
    for qid, statement in window.items():
        idle = background.get(qid)
        rate = idle.calls / background_s if idle is not None and background_s > 0 else 0.0
        calls = max(0, round(statement.calls - rate * window_s))
        if calls:
            net[qid] = Statement(qid, statement.query, calls)
    return net


@dataclass
class LockWaits:
    """Samples of the gateways' backends waiting for a heavyweight lock."""

    samples: int = 0
    waiting: int = 0
    samples_with_waiter: int = 0
    by_event: Counter[str] = field(default_factory=Counter)
    by_query: Counter[str] = field(default_factory=Counter)

    def add(self, rows: list[tuple[str, str]]) -> None:
        self.samples += 1
        self.waiting += len(rows)
        self.samples_with_waiter += bool(rows)
        for event, query in rows:
            self.by_event[event] += 1
            self.by_query[query] += 1

    def as_dict(self) -> dict[str, Any]:
        """Mean waiting backends per sample, overall and by ``wait_event``; the share of
        samples with any waiter; the statements seen waiting most."""
        n = self.samples or 1
        return {
            "samples": self.samples,
            "mean_waiting": self.waiting / n,
            "share_with_waiter": self.samples_with_waiter / n,
            "by_event": {event: count / n for event, count in self.by_event.most_common()},
            "top_waiting_queries": [{"query": query, "mean_waiting": count / n}
                                    for query, count in self.by_query.most_common(TOP_QUERIES)],
        }


class LockSampler:
    """Samples ``pg_stat_activity`` every ``SAMPLE_EVERY_S`` in a thread, from ``start`` to
    ``stop``, for backends of ``database`` whose ``wait_event_type`` is ``Lock`` (a row lock
    shows as ``transactionid`` or ``tuple``, an advisory lock as ``advisory``)."""

    def __init__(self, conninfo: str, database: str, every_s: float = SAMPLE_EVERY_S) -> None:
        self.database = database
        self.every_s = every_s
        self.waits = LockWaits()
        self._conn = psycopg.connect(conninfo, autocommit=True)
        row = self._conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self._backend = psutil.Process(int(row[0]))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)
        self._cpu_start = 0.0
        self.backend_cpu_s = 0.0
        """CPU the sampler's backend used between start and stop: the server's cost of
        sampling, not of the gateways."""

    def start(self) -> LockSampler:
        self._cpu_start = self._backend_cpu()
        self._thread.start()
        return self

    def stop(self) -> LockWaits:
        """Stop sampling (or never start) and close the connection; what was sampled."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
            self.backend_cpu_s = self._backend_cpu() - self._cpu_start
        self._conn.close()
        return self.waits

    def _backend_cpu(self) -> float:
        times = self._backend.cpu_times()
        return float(times.user + times.system)

    def _run(self) -> None:
        query = ("SELECT wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 120) "
                 "FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'")
        next_at = time.monotonic()
        while not self._stop.is_set():
            rows = self._conn.execute(query, (self.database,)).fetchall()
            self.waits.add([(str(event), str(text)) for event, text in rows])
            next_at += self.every_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

"""Prometheus metrics of the gateway (``GET /metrics``); aggregates only, no tenant data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("specgate_calls_total", "Call state transitions, by effect class and new status",
                ["effect", "status"])
SPECULATION = Counter("specgate_speculation_total",
                      "Issued calls by how their turn treated them (kept or cancelled)",
                      ["outcome"])
HELD = Gauge("specgate_held_transactions", "Turn transaction connections held open now")
COMMIT_SECONDS = Histogram("specgate_turn_commit_seconds", "Turn commit latency",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))

_KEPT = {"committed"}
_DROPPED = {"cancelled", "conflict", "expired", "aborted"}


def call_moved(effect: str, status: str) -> None:
    CALLS.labels(effect=effect, status=status).inc()
    if status in _KEPT:
        SPECULATION.labels(outcome="kept").inc()
    elif status in _DROPPED:
        SPECULATION.labels(outcome="cancelled").inc()

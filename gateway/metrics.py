"""Prometheus metrics of the gateway (``GET /metrics``); aggregates only, no tenant data."""

from __future__ import annotations

from functools import cache

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
    _moved(effect, status).inc()
    if status in _KEPT:
        _speculation("kept").inc()
    elif status in _DROPPED:
        _speculation("cancelled").inc()


# Every call moves several times: its counters are found once, not by label each time.
@cache
def _moved(effect: str, status: str) -> Counter:
    return CALLS.labels(effect=effect, status=status)


@cache
def _speculation(outcome: str) -> Counter:
    return SPECULATION.labels(outcome=outcome)

"""Latency samples to figures: percentiles, throughput and CPU per call of one measured phase.

Throughput is derived with Little's law (``sessions / mean latency``) rather than from wall
time, because several scenarios interleave untimed requests (opening and committing turns)
with the timed ones; wall-clock throughput is kept in the JSON too, for transparency.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Phase:
    """Raw measurements of one scenario at one concurrency."""

    scenario: str
    sessions: int
    samples_s: list[float]
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    worker_cpu_s: float | None = None


def merge(phases: list[Phase]) -> Phase:
    """The rounds of one scenario at one concurrency as one phase: samples pooled, time and
    CPU added up."""
    first = phases[0]
    if any((p.scenario, p.sessions) != (first.scenario, first.sessions) for p in phases):
        raise ValueError("merge takes the rounds of one scenario at one concurrency")

    def total(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(v for v in values if v)

    return Phase(scenario=first.scenario, sessions=first.sessions,
                 samples_s=[s for p in phases for s in p.samples_s],
                 wall_s=sum(p.wall_s for p in phases),
                 client_cpu_s=sum(p.client_cpu_s for p in phases),
                 server_cpu_s=total([p.server_cpu_s for p in phases]),
                 worker_cpu_s=total([p.worker_cpu_s for p in phases]))


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures reported for one scenario at one concurrency (latencies in ms)."""

    scenario: str
    sessions: int
    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    calls_per_s: float
    wall_calls_per_s: float
    client_cpu_ms_per_call: float
    server_cpu_ms_per_call: float | None
    worker_cpu_ms_per_call: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    """(p50, p99) with the inclusive method, which interpolates between observed values and so
    never reports a latency outside the measured range, even for tiny samples."""
    if not samples_ms:
        return math.nan, math.nan
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0]
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def summarize(phase: Phase) -> Summary:
    """Reduce one phase to its reported figures."""
    samples_ms = [s * 1000.0 for s in phase.samples_s]
    n = len(samples_ms)
    p50, p99 = percentiles(samples_ms)
    mean = statistics.fmean(samples_ms) if n else math.nan
    per_call = 1000.0 / n if n else math.nan
    server = None if phase.server_cpu_s is None else phase.server_cpu_s * per_call
    worker = None if phase.worker_cpu_s is None else phase.worker_cpu_s * per_call
    return Summary(
        scenario=phase.scenario,
        sessions=phase.sessions,
        n=n,
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        max_ms=max(samples_ms) if n else math.nan,
        calls_per_s=phase.sessions / (mean / 1000.0) if n else 0.0,
        wall_calls_per_s=n / phase.wall_s if phase.wall_s > 0 else 0.0,
        client_cpu_ms_per_call=phase.client_cpu_s * per_call,
        server_cpu_ms_per_call=server,
        worker_cpu_ms_per_call=worker,
    )

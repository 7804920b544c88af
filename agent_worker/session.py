"""Run one user utterance as a whole session: the glue the CLI and the benchmarks share.

``run_session`` opens a gateway session, plays the input through the agent (speculative or the
synchronous baseline, by ``config.mode``), closes the session and returns the turn's result.
On a ``VirtualClock`` it drives simulated time for the duration.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from agent_worker.call_records import ToolLatency
from agent_worker.clock import Clock, VirtualClock
from agent_worker.events import UserChunk
from agent_worker.gateway_client import GatewayClient
from agent_worker.model import Backend
from agent_worker.protocol import ToolCall
from agent_worker.runtime import Agent, AgentConfig, TurnResult
from agent_worker.trace import Trace

Source = Callable[[Clock], AsyncIterator[UserChunk]]


@dataclass
class SessionResult:
    session_id: str
    turn: TurnResult
    trace: Trace


def uniform_latency(low: float, high: float, seed: int = 0) -> ToolLatency:
    """Injected tool latency drawn from U[low, high] per call (the benchmarks use U[0.5, 1] s:
    docs/architecture.md#benchmarks)."""
    rng = random.Random(seed)

    def latency(call: ToolCall) -> float:
        return rng.uniform(low, high)

    return latency


def stable_latency(low: float, high: float, seed: int, salt: str) -> ToolLatency:
    """U[low, high] per call, drawn from a hash of (seed, salt, tool, arguments): the same
    call gets the same latency in every mode and run."""
    def latency(call: ToolCall) -> float:
        key = json.dumps([seed, salt, call.name, call.arguments], sort_keys=True, default=str)
        draw = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
        return low + (high - low) * draw

    return latency


def latency_range(spec: str) -> tuple[float, float]:
    """``"0.5-1"`` (uniform), ``"0.7"`` (fixed) → (low, high) seconds."""
    low, _, high = spec.partition("-")
    try:
        a, b = float(low), float(high or low)
    except ValueError:
        raise ValueError(f"tool latency {spec!r}: write seconds, e.g. 0.7 or 0.5-1") from None
    if a < 0 or b < a:
        raise ValueError(f"tool latency {spec!r}: need 0 <= low <= high")
    return a, b


def parse_latency(spec: str | None, seed: int = 0) -> ToolLatency | None:
    """A ``latency_range`` drawn uniformly per call, or None for None/empty (none)."""
    return uniform_latency(*latency_range(spec), seed) if spec else None


async def run_session(gateway: GatewayClient, backend: Backend, clock: Clock, source: Source,
                      *, config: AgentConfig | None = None, trace: Trace | None = None,
                      metadata: dict[str, Any] | None = None) -> SessionResult:
    trace = trace or Trace(clock)
    async with AsyncExitStack() as stack:
        if isinstance(clock, VirtualClock):
            await stack.enter_async_context(clock.running())
        agent = Agent(backend, gateway, clock, trace, config)
        session_id = await agent.start(metadata)
        try:
            result = await agent.turn(source(clock))
        finally:
            await agent.close()
    return SessionResult(session_id, result, trace)

"""A real gateway over the demo shop (in-process app, real Postgres), reached by the agent's
async client through httpx's ASGI transport, and runners for one session on a simulated
clock: with the scripted model, or with any backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_worker import inputs
from agent_worker.clock import Clock, VirtualClock
from agent_worker.gateway_client import GatewayClient
from agent_worker.model import Backend
from agent_worker.runtime import Agent, AgentConfig, TurnResult
from agent_worker.session import Source
from agent_worker.trace import Trace
from gateway.config import Settings
from tests.agent_worker.scripted import Rule, ScriptedModel
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import Api, shop_state


@dataclass
class Run:
    agent: Agent
    backend: Any
    trace: Trace
    result: TurnResult | None = None  # of the last turn
    results: list[TurnResult] = field(default_factory=list)
    error: BaseException | None = None
    session: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> ScriptedModel:
        assert isinstance(self.backend, ScriptedModel)
        return self.backend

    def dump(self, last: int = 60) -> str:
        """The trace's last records, one a line, for assertion messages."""
        return "\n".join(json.dumps(r, default=str)[:240] for r in self.trace.records[-last:])

    def calls(self) -> list[dict[str, Any]]:
        """Every gateway call of the session, in issue order."""
        return [c for turn in self.session["turns"] for c in turn["calls"]]

    def final(self, client_id: int) -> dict[str, Any]:
        """The last gateway call with this client id."""
        return [c for c in self.calls() if c["client_call_id"] == str(client_id)][-1]


@dataclass
class World:
    app: Any
    key: str
    api: Api
    shop_url: str
    settings: Settings

    def run(self, rules: Sequence[Rule], chunks: Sequence[tuple[float, str]],
            config: AgentConfig | None = None) -> Run:
        """One utterance (chunks at their times) played through the scripted model."""
        return self.play(lambda clock: ScriptedModel(clock, list(rules)),
                         lambda clock: inputs.timed_chunks(clock, chunks), config=config)

    def play(self, backend: Callable[[Clock], Backend], *sources: Source,
             config: AgentConfig | None = None, clock: Clock | None = None) -> Run:
        """One session on ``clock`` (simulated unless given): one turn per source."""
        return asyncio.run(self._play(backend, sources, config, clock or VirtualClock()))

    async def _play(self, make_backend: Callable[[Clock], Backend],
                    sources: Sequence[Source], config: AgentConfig | None,
                    clock: Clock) -> Run:
        async with AsyncExitStack() as stack:
            if isinstance(clock, VirtualClock):
                await stack.enter_async_context(clock.running())
            gateway = GatewayClient.connect("http://gateway", self.key, clock,
                                            transport=httpx.ASGITransport(app=self.app))
            backend = make_backend(clock)
            trace = Trace(clock)
            run = Run(Agent(backend, gateway, clock, trace, config), backend, trace)
            try:
                await run.agent.start()
                for source in sources:
                    run.result = await asyncio.wait_for(run.agent.turn(source(clock)), 120)
                    run.results.append(run.result)
            except Exception as error:  # the test asserts on it
                run.error = error
            finally:
                await run.agent.close()
                run.session = await gateway.session(run.agent.graph.session_id)
                await gateway.aclose()
                close = getattr(run.backend, "aclose", None)
                if close is not None:  # a backend holding a connection (Realtime)
                    await close()
        return run

    def shop(self) -> dict[str, list[dict[str, Any]]]:
        return shop_state(self.shop_url)

    def reset(self) -> None:
        reset_shop(self.shop_url, self.settings)


@pytest.fixture
def world(pg_home: Path, ledger_url: str, gateway_factory: Any, tenant: str) -> World:
    from gateway.auth.service import create_key
    from gateway.db import make_engine

    settings = make_settings(pg_home, ledger_url)
    reset_shop(ledger_url, settings)
    client = gateway_factory(settings)
    engine = make_engine(ledger_url, pool_size=1)
    _, key = create_key(engine, tenant, "app")
    engine.dispose()
    return World(app=client.app, key=key, api=Api(client, key), shop_url=ledger_url,
                 settings=settings)

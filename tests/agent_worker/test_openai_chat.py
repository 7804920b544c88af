"""The OpenAI-compatible backend against a local server speaking the chat-completions
streaming protocol: deltas streamed, the stream closed when the runtime interrupts, and a
whole turn through the runtime against the real gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agent_worker import inputs
from agent_worker.backends.openai_chat import OpenAIChatBackend
from agent_worker.clock import WallClock
from agent_worker.errors import BackendError
from agent_worker.model import Context
from tests.agent_worker.conftest import World
from tests.agent_worker.fake_openai import FakeOpenAI

CONTEXT = Context("You are a test.", (("user", "<final_query_update>hi</final_query_update>"),))


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_streams_the_deltas_of_the_chat_stream() -> None:
    with FakeOpenAI(lambda messages: _pieces("<answer>Hello there.</answer>")) as server:
        backend = OpenAIChatBackend.create(model="fake-model", base_url=server.base_url)

        async def main() -> list[str]:
            return [d async for d in backend.stream(CONTEXT)]

        deltas = asyncio.run(main())
    assert "".join(deltas) == "<answer>Hello there.</answer>"
    assert len(deltas) > 1
    [request] = server.requests
    assert request["model"] == "fake-model" and request["stream"] is True
    assert request["messages"] == [{"role": "system", "content": "You are a test."},
                                   {"role": "user", "content": CONTEXT.segments[0][1]}]


def test_closing_the_generation_closes_the_http_stream() -> None:
    with FakeOpenAI(lambda messages: ["<think>"] + ["la "] * 200, delay_s=0.02) as server:
        backend = OpenAIChatBackend.create(model="fake-model", base_url=server.base_url)

        async def main() -> list[str]:
            got = []
            stream = backend.stream(CONTEXT)
            async for delta in stream:
                got.append(delta)
                if len(got) == 3:
                    break
            await stream.aclose()  # what the runtime does when an event interrupts
            return got

        assert len(asyncio.run(main())) == 3
        assert server.disconnected.wait(timeout=20), "the server never saw the client go"
    assert server.sent[0] < 200


def test_a_server_error_is_a_backend_error() -> None:
    backend = OpenAIChatBackend.create(model="m", base_url="http://127.0.0.1:9/v1")

    async def main() -> None:
        async for _ in backend.stream(CONTEXT):
            pass

    with pytest.raises(BackendError):
        asyncio.run(main())


def _shop_model(messages: list[dict[str, Any]]) -> list[str]:
    """A model of the demo shop: opens Ann's order, then answers with the result."""
    last = messages[-1]["content"]
    if "<observation" in last:
        return _pieces("<answer>Your order is open, Ann.</answer>")
    call = {"id": 1, "name": "demo.create_order", "arguments": {"customer": "Ann"}}
    return _pieces(f"<think>open an order</think><tool_call>{json.dumps(call)}</tool_call>")


def test_a_turn_through_the_runtime_against_the_gateway(world: World) -> None:
    with FakeOpenAI(_shop_model) as server:
        run = world.play(
            lambda clock: OpenAIChatBackend.create(model="fake", base_url=server.base_url),
            lambda clock: inputs.timed_chunks(clock, [(0.0, "This is Ann, open an order.")]),
            clock=WallClock())
    assert run.error is None, f"{run.error!r}\n{run.dump()}"
    assert run.result is not None and run.result.answer == "Your order is open, Ann."
    assert [(c["tool"], c["status"]) for c in run.calls()] == [
        ("demo.create_order", "committed")]
    assert [o["customer"] for o in world.shop()["demo_orders"]] == ["Ann"]
    first, last = server.requests[0]["messages"], server.requests[-1]["messages"]
    assert first[0]["role"] == "system" and "demo.create_order" in first[0]["content"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    assert '<observation id="1">' in last[-1]["content"]

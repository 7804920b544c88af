"""The Realtime backend against a local server speaking the Realtime event protocol: deltas
streamed, only new items sent, the service's history kept equal to the runtime's transcript
across interruptions, errors and dropped connections; then whole turns through the runtime
against the real gateway (wall clock: the backend talks to a real socket)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import pytest

from agent_worker import inputs, protocol
from agent_worker.backends.realtime import RealtimeBackend
from agent_worker.clock import WallClock
from agent_worker.errors import BackendError
from agent_worker.model import Context, Role, Transcript
from tests.agent_worker.conftest import Run, World
from tests.agent_worker.realtime_server import (
    Conversation,
    Drop,
    Fail,
    Oops,
    Piece,
    RealtimeServer,
    merged,
    pieces,
)

SYSTEM = "You are a test."
Segments = tuple[tuple[Role, str], ...]


def _user(text: str, final: bool = False) -> tuple[Role, str]:
    return "user", protocol.render_update(text, final=final)


def _backend(server: RealtimeServer) -> RealtimeBackend:
    return RealtimeBackend.create(model="gpt-realtime", websocket_base_url=server.url)


async def _collect(stream: AsyncGenerator[str, None], upto: int | None = None) -> list[str]:
    """The stream's deltas; with ``upto``, close it after that many (a runtime interrupt)."""
    got: list[str] = []
    try:
        async for delta in stream:
            got.append(delta)
            if upto is not None and len(got) == upto:
                break
    finally:
        await stream.aclose()
    return got


def _by_last_user(*rules: tuple[str, str]) -> Any:
    """A reply: the text of the first rule whose key is in the last user item."""
    def reply(conversation: Conversation) -> list[Piece]:
        last = next(text for role, text in reversed(conversation) if role == "user")
        return pieces(next((text for key, text in rules if key in last), "<pause/>"))
    return reply


# The protocol ---------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["output_text", "older-text-delta"])
def test_streams_deltas_sending_only_what_the_service_lacks(legacy: bool) -> None:
    reply = _by_last_user(("a kettle", "<think>kettle</think><pause/>"),
                          ("thanks", "<answer>One kettle.</answer>"))
    with RealtimeServer(reply, legacy=legacy) as server:
        backend = _backend(server)
        first: Segments = (("user", _user("I'd like")[1] + _user("a kettle")[1]),)

        async def main() -> list[list[str]]:
            one = await _collect(backend.stream(Context(SYSTEM, first)))
            second = (*first, ("assistant", "".join(one)), _user("thanks.", final=True))
            two = await _collect(backend.stream(Context(SYSTEM, second)))
            await backend.aclose()
            return [one, two]

        one, two = asyncio.run(main())
    assert "".join(one) == "<think>kettle</think><pause/>" and len(one) > 1
    assert "".join(two) == "<answer>One kettle.</answer>"
    assert server.connections == 1 and server.paths == ["/v1/realtime?model=gpt-realtime"]
    [update] = server.of("session.update")
    assert update["session"]["instructions"] == SYSTEM
    assert update["session"]["output_modalities"] == ["text"]
    # Only user items were sent (the service wrote the assistant item itself), in order.
    created = [(e["item"]["role"], e["item"]["content"][0]["text"])
               for e in server.of("conversation.item.create")]
    assert created == [first[0], _user("thanks.", final=True)]
    assert server.kinds() == ["session.update", "conversation.item.create", "response.create",
                              "conversation.item.create", "response.create"]
    assert merged(server.snapshots[-1]) == [
        first[0], ("assistant", "".join(one)), _user("thanks.", final=True)]


def test_an_interrupted_response_is_cancelled_and_replaced_by_the_kept_text() -> None:
    endless: list[Piece] = ["<think>The user", " wants", *[" more"] * 2000]
    answer = "<think>a kettle</think><pause/>"

    def reply(conversation: Conversation) -> list[Piece]:
        return pieces(answer) if "a kettle" in conversation[-1][1] else list(endless)

    with RealtimeServer(reply, delay_s=0.01) as server:
        backend = _backend(server)
        first: Segments = (_user("I'd like"),)

        async def main() -> tuple[list[str], list[str], Segments]:
            stream = backend.stream(Context(SYSTEM, first))
            got = [await anext(stream) for _ in range(3)]
            # The service is ahead of what was read: its item holds more than the runtime got.
            assert server.wait_sent("response.output_text.delta", 10)
            await stream.aclose()
            # What the runtime keeps of a think cut short, then the chunk that cut it.
            kept = "".join(got) + protocol.THINK_INTERRUPTED
            second: Segments = (*first, ("assistant", kept), _user("a kettle"))
            assert server.wait_for("response.cancel")
            after = await _collect(backend.stream(Context(SYSTEM, second)))
            await backend.aclose()
            return got, after, second

        got, after, second = asyncio.run(main())
    assert "".join(got) == "<think>The user wants more"
    [cancel] = server.of("response.cancel")
    assert cancel["response_id"].startswith("resp_")
    assert "".join(after) == answer  # nothing of the cancelled response leaked in
    # The service's history matched the runtime's kept text when the next response started.
    assert merged(server.snapshots[-1]) == list(second)
    [delete] = server.of("conversation.item.delete")
    assert [e["item"]["role"] for e in server.of("conversation.item.create")] == [
        "user", "assistant", "user"]
    assert server.connections == 1


def test_a_cancel_that_comes_after_the_response_ended_is_harmless() -> None:
    """The runtime stops at ``<pause/>``; the service may have finished the response by then
    and answers the cancel with an error, which must not fail the next step."""
    with RealtimeServer(lambda conversation: ["<pause/>", "\n"]) as server:
        backend = _backend(server)
        first: Segments = (_user("I'd like"),)

        async def main() -> list[str]:
            stream = backend.stream(Context(SYSTEM, first))
            assert await anext(stream) == "<pause/>"
            assert server.wait_sent("response.done")
            await stream.aclose()
            second = (*first, ("assistant", "<pause/>"), _user("a kettle"))
            after = await _collect(backend.stream(Context(SYSTEM, second)))
            await backend.aclose()
            return after

        after = asyncio.run(main())
    assert "".join(after) == "<pause/>\n"
    assert len(server.of("response.cancel")) == 1
    assert server.sent.count((0, "error")) == 1
    # The service's "<pause/>\n" was replaced by the runtime's "<pause/>".
    assert merged(server.snapshots[-1])[1] == ("assistant", "<pause/>")


@pytest.mark.parametrize("ticks", [0, 1, 3, 8, 30])
def test_an_interrupt_at_any_point_of_a_step_leaves_the_histories_equal(ticks: int) -> None:
    """The runtime may stop a step while it settles the previous response, sends or streams:
    whatever had gone out, the next step starts from a service history equal to the
    runtime's transcript."""
    def reply(conversation: Conversation) -> list[Piece]:
        if "thanks" in conversation[-1][1]:
            return pieces("<pause/>")
        return ["<think>", *[" la"] * 2000]

    with RealtimeServer(reply) as server:
        backend = _backend(server)
        transcript = Transcript()

        async def step(upto: int | None = None, ticks: int | None = None) -> None:
            """A step the runtime interrupts after ``upto`` deltas or ``ticks`` loop turns."""
            read: list[str] = []

            async def pump() -> None:  # what the runtime's generation task does
                context = Context(SYSTEM, tuple(transcript.segments))
                async with aclosing(backend.stream(context)) as stream:
                    async for delta in stream:
                        read.append(delta)
                        if len(read) == upto:
                            return

            task = asyncio.create_task(pump())
            for _ in range(ticks or 0):
                await asyncio.sleep(0)
            if ticks is not None:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # What the runtime keeps of a think cut short: what it read, closed.
            transcript.add("assistant", "".join(read) + protocol.THINK_INTERRUPTED if read
                           else "")

        async def main() -> list[str]:
            transcript.add(*_user("I'd like"))
            await step(upto=2)
            transcript.add(*_user("a kettle"))
            await step(ticks=ticks)
            transcript.add(*_user("thanks.", final=True))
            after = await _collect(backend.stream(Context(SYSTEM, tuple(transcript.segments))))
            await backend.aclose()
            return after

        assert "".join(asyncio.run(main())) == "<pause/>"
    assert merged(server.snapshots[-1]) == transcript.segments


def test_an_http_base_url_finds_the_websocket_at_the_same_place() -> None:
    """``--base-url http://host/v1`` is enough: the client swaps the scheme."""
    with RealtimeServer(lambda conversation: pieces("<pause/>")) as server:
        backend = RealtimeBackend.create(model="gpt-realtime",
                                         base_url=server.url.replace("ws://", "http://"))

        async def main() -> list[str]:
            deltas = await _collect(backend.stream(Context(SYSTEM, (_user("hi"),))))
            await backend.aclose()
            return deltas

        assert "".join(asyncio.run(main())) == "<pause/>"
    assert server.paths == ["/v1/realtime?model=gpt-realtime"]


# Failures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [Oops("the model crashed"), Drop()], ids=["error", "drop"])
def test_a_broken_step_fails_and_the_next_one_reconnects(failure: Piece) -> None:
    script: list[list[Piece]] = [
        pieces("<think>ok</think><pause/>"), ["<think>", failure], pieces("<answer>Hi.</answer>")]

    def reply(conversation: Conversation) -> list[Piece]:
        return script.pop(0)

    with RealtimeServer(reply) as server:
        backend = _backend(server)
        segments: Segments = (_user("hello"),)

        async def main() -> tuple[BackendError, list[str]]:
            one = "".join(await _collect(backend.stream(Context(SYSTEM, segments))))
            grown: Segments = (*segments, ("assistant", one), _user("there", final=True))
            with pytest.raises(BackendError) as failed:
                await _collect(backend.stream(Context(SYSTEM, grown)))
            again = await _collect(backend.stream(Context(SYSTEM, grown)))
            await backend.aclose()
            return failed.value, again

        error, again = asyncio.run(main())
    expected = "the model crashed" if isinstance(failure, Oops) else "connection closed"
    assert expected in str(error)
    assert "".join(again) == "<answer>Hi.</answer>"
    assert server.connections == 2
    # The new connection was told everything again: instructions, then the whole transcript.
    second = [e for n, e in server.events if n == 1]
    assert [e["type"] for e in second] == ["session.update", *["conversation.item.create"] * 3,
                                           "response.create"]
    assert merged(server.snapshots[-1]) == [
        _user("hello"), ("assistant", "<think>ok</think><pause/>"),
        _user("there", final=True)]


def test_a_failed_response_is_a_backend_error_on_the_same_connection() -> None:
    script: list[list[Piece]] = [["<think>", Fail("rate limited")], pieces("<pause/>")]
    with RealtimeServer(lambda conversation: script.pop(0)) as server:
        backend = _backend(server)
        context = Context(SYSTEM, (_user("hello"),))

        async def main() -> list[str]:
            with pytest.raises(BackendError, match="the response failed: rate limited"):
                await _collect(backend.stream(context))
            kept = Context(SYSTEM, (*context.segments, _user(" there")))
            again = await _collect(backend.stream(kept))
            await backend.aclose()
            return again

        assert "".join(asyncio.run(main())) == "<pause/>"
    assert server.connections == 1
    # The failed response's partial item was replaced: the runtime kept nothing of it.
    assert merged(server.snapshots[-1]) == [("user", _user("hello")[1] + _user(" there")[1])]


def test_an_unreachable_service_is_a_backend_error() -> None:
    backend = RealtimeBackend.create(model="m", websocket_base_url="ws://127.0.0.1:9/v1")

    async def main() -> None:
        await _collect(backend.stream(Context(SYSTEM, (_user("hello"),))))

    with pytest.raises(BackendError, match="realtime model 'm'"):
        asyncio.run(main())


# Through the runtime --------------------------------------------------------------------------

CALL = json.dumps({"id": 1, "name": "demo.create_order", "arguments": {"customer": "Ann"}})
SHOP = [("<observation", "<answer>Your order is open, Ann.</answer>"),
        ("<final_query_update>", f"<think>open it</think><tool_call>{CALL}</tool_call>")]


def _play(world: World, server: RealtimeServer, *turns: Sequence[tuple[float, str]]) -> Run:
    """One session on the wall clock, a turn per list of timed chunks."""
    return world.play(lambda clock: _backend(server),
                      *(lambda clock, chunks=chunks: inputs.timed_chunks(clock, chunks)
                        for chunks in turns), clock=WallClock())


def _committed_order(world: World, run: Run, server: RealtimeServer) -> None:
    assert run.error is None, f"{run.error!r}\n{run.dump()}"
    assert run.results[0].answer == "Your order is open, Ann."
    assert [(c["tool"], c["status"]) for c in run.calls()] == [
        ("demo.create_order", "committed")]
    assert [o["customer"] for o in world.shop()["demo_orders"]] == ["Ann"]
    # One connection for the session; the service's history at the last step was exactly the
    # runtime's transcript (which then got the answer).
    assert server.connections == 1 and len(server.of("session.update")) == 1
    assert merged(server.snapshots[-1]) == run.agent.transcript.segments[:-1]


def test_turns_pause_then_call_then_answer_on_one_connection(world: World) -> None:
    reply = _by_last_user(("thanks", "<answer>Goodbye, Ann.</answer>"), *SHOP,
                          ("This is Ann", "<think>Ann is speaking</think><pause/>"))
    with RealtimeServer(reply) as server:
        run = _play(world, server, [(0.0, "This is Ann,"), (0.8, "open an order please.")],
                    [(0.0, "That is all, thanks.")])
    _committed_order(world, run, server)
    assert [r.answer for r in run.results] == ["Your order is open, Ann.", "Goodbye, Ann."]
    assert server.snapshots[0] == [_user("This is Ann,")]
    assert "demo.create_order" in server.of("session.update")[0]["session"]["instructions"]
    # The second turn sent only its own words: nothing of the first was sent twice.
    users = [e["item"]["content"][0]["text"] for e in server.of("conversation.item.create")
             if e["item"]["role"] == "user"]
    assert sum("This is Ann" in text for text in users) == 1
    assert users[-1] == _user("That is all, thanks.", final=True)[1]


def test_a_user_chunk_interrupts_the_response_mid_think(world: World) -> None:
    def reply(conversation: Conversation) -> list[Piece]:
        last = conversation[-1][1]
        for key, text in SHOP:
            if key in last:
                return pieces(text)
        return ["<think>Ann", " is", " speaking", *[" and"] * 2000]  # until interrupted

    with RealtimeServer(reply, delay_s=0.02) as server:
        run = _play(world, server, [(0.0, "This is Ann,"), (0.6, "open an order please.")])
    _committed_order(world, run, server)
    interrupt = run.trace.first("interrupt")
    assert interrupt is not None and interrupt["in_tag"] == "think", run.dump()
    assert len(server.of("response.cancel")) >= 1
    thought = merged(server.snapshots[1])[1]
    assert thought[0] == "assistant" and thought[1].startswith("<think>Ann is speaking")
    assert thought[1].endswith(protocol.THINK_INTERRUPTED)


def test_a_dropped_connection_fails_the_turn_cleanly(world: World) -> None:
    with RealtimeServer(lambda conversation: ["<think>", Drop()]) as server:
        run = _play(world, server, [(0.0, "This is Ann, open an order please.")])
    assert isinstance(run.error, BackendError), run.dump()
    assert "connection closed" in str(run.error)
    assert run.calls() == [] and world.shop()["demo_orders"] == []

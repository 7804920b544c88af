"""Timed streams, played through the agent runtime, on small hand-written tasks: where each call
appears (worked out by hand below), how an event cuts a step, wrong early calls and their
fixes, the sync variant; the scripted gateway at the runtime's edge."""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import replace
from typing import Any

import pytest

from agent_worker import call_records, protocol
from agent_worker.backends.oracle import OracleTask
from agent_worker.clock import WallClock
from agent_worker.errors import GatewayError
from agent_worker.model import PROFILES, LatencyProfile
from agent_worker.prompt import system_prompt
from agent_worker.protocol import Remove, ToolCall
from lab.training import data, streams
from lab.training.author import Author
from lab.training.scripted_gateway import ScriptedGateway
from lab.training.sources import Options, Result, Spec, WrongCall, call_key, timed_chunks


def _tool(name: str, effect: str, *arguments: str) -> dict[str, Any]:
    return {"name": name, "description": f"{name} (test tool).", "effect": effect,
            "parameters": {"type": "object", "required": list(arguments),
                           "properties": {a: {"type": "string"} for a in arguments}}}


TOOLS = (_tool("shop.find_user", "safe", "email"),
         _tool("shop.get_order", "safe", "order_id", "user_id"),
         _tool("shop.cancel", "sensitive", "order_id", "reason"),
         _tool("shop.note", "reversible", "order_id", "text"),
         _tool("shop.log", "safe", "code"))

# 150 words/min without jitter: word i ends at 0.4·(i+1) s; a 0.5 s chunk holds the words ending
# in its window (k·0.5, (k+1)·0.5] and is delivered at its last word's end, so "and" (1.6 s)
# and "my" (2.0 s) share a chunk, as do "Please" (3.6) and "cancel" (4.0), "mistake." (5.6)
# and "Thank" (6.0).
UTTERANCE = "I am jo@x.com and my order is W42. Please cancel it, ordered by mistake. Thank you."
CHUNKS = ((0.4, "I"), (0.8, "am"), (1.2, "jo@x.com"), (2.0, "and my"), (2.4, "order"),
          (2.8, "is"), (3.2, "W42."), (4.0, "Please cancel"), (4.4, "it,"), (4.8, "ordered"),
          (5.2, "by"), (6.0, "mistake. Thank"), (6.4, "you."))
GOLD = (ToolCall(1, "shop.find_user", {"email": "jo@x.com"}),
        ToolCall(2, "shop.get_order", {"order_id": "W42", "user_id": "u_jo"}),
        ToolCall(3, "shop.cancel", {"order_id": "W42", "reason": "ordered by mistake"}, (2,)))
STAGED = {"status": "staged", "message": "validated; it runs when the turn commits"}
RESULTS = {(1, call_key(GOLD[0].arguments)): Result({"user_id": "u_jo"}),
           (2, call_key(GOLD[1].arguments)): Result({"order_id": "W42", "status": "pending"}),
           (3, call_key(GOLD[2].arguments)): Result(STAGED)}
LATENCY = {"shop.find_user": 2.5, "shop.get_order": 0.5, "shop.cancel": 0.5,
           "shop.note": 3.0, "shop.log": 1.0}


def _latency(call: ToolCall) -> float:
    return LATENCY[call.name]


def _spec(chunks: tuple[tuple[float, str], ...] = CHUNKS, **changes: Any) -> Spec:
    # at_final empty: at the final update, a value is still known only once heard or shown
    task = OracleTask(" ".join(t for _, t in chunks), GOLD, "Done.", name="hand",
                      at_final=frozenset())
    spec = Spec("hand", TOOLS, task, chunks, RESULTS, _latency)
    return replace(spec, **changes)


def _play(spec: Spec, mode: streams.Mode = "async", profile: str | LatencyProfile = "instant",
          seed: int = 7) -> streams.Stream:
    chosen = PROFILES[profile] if isinstance(profile, str) else profile
    return streams.simulate(spec, mode, chosen, random.Random(seed))


def _calls(content: str) -> list[ToolCall]:
    return [e for e in protocol.parse_all(content) if isinstance(e, ToolCall)]


def _first_with(messages: list[dict[str, Any]], name: str) -> int:
    return next(i for i, m in enumerate(messages)
                if m["role"] == "assistant" and any(c.name == name for c in _calls(m["content"])))


def test_chunks_are_the_runtimes_windows_of_the_spoken_words() -> None:
    chunks = timed_chunks(UTTERANCE, random.Random(0), Options(jitter=0.0))
    assert [text for _, text in chunks] == [text for _, text in CHUNKS]
    assert [at for at, _ in chunks] == pytest.approx([at for at, _ in CHUNKS])


def test_each_call_appears_right_after_what_completes_its_last_value() -> None:
    stream = _play(_spec())
    messages = stream.messages
    # find_user: its email is the third chunk; get_order: "W42" is heard at 3.2 s but "u_jo"
    # only shows in find_user's result, 1.2 + 2.5 = 3.7 s; cancel: "ordered by mistake" is
    # complete with the chunk "mistake. Thank" (6.0 s), before the final update.
    expected = {"shop.find_user": "<partial_query_update>jo@x.com</partial_query_update>",
                "shop.get_order": '<observation id="1">{"user_id":"u_jo"}</observation>',
                "shop.cancel": "<partial_query_update>mistake. Thank</partial_query_update>"}
    for name, trigger in expected.items():
        at = _first_with(messages, name)
        assert messages[at - 1]["content"] == trigger, name
    issued = {c["name"]: c["issued_at"] for c in stream.meta["calls"]}
    assert issued == pytest.approx({"shop.find_user": 1.2, "shop.get_order": 3.7,
                                    "shop.cancel": 6.0})
    assert data.check(stream, _spec()) == []


def test_no_call_before_its_last_value_on_a_real_clock() -> None:
    instant = {c["name"]: c["issued_at"] for c in _play(_spec()).meta["calls"]}
    for profile in ("edge", "cloud"):
        stream = _play(_spec(), profile=profile)
        assert data.check(stream, _spec()) == []  # includes: no value used before it is known
        for call in stream.meta["calls"]:
            assert call["issued_at"] >= instant[call["name"]]


def test_the_sample_is_the_runtimes_transcript() -> None:
    stream = _play(_spec(), profile="edge")
    assert stream.messages[0] == {"role": "system", "content": system_prompt(TOOLS)}
    roles = [m["role"] for m in stream.messages[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    assert stream.messages[-1]["content"].endswith("<answer>Done.</answer>")
    assert stream.meta["post_turn_s"] == pytest.approx(
        stream.meta["answer_started_at"] - CHUNKS[-1][0])


SLOW = LatencyProfile("slow", ttft_s=0.2, tokens_per_s=25.0)  # 0.01 s per character
# call A (log X9) is heard first; call B (a note with spaces, so its JSON comes in several
# pieces) at 4 s. A's tool latency places A's observation inside the step that writes B.
TWO = (ToolCall(1, "shop.log", {"code": "X9"}),
       ToolCall(2, "shop.note", {"order_id": "W42", "text": "ordered by mistake"}))
TWO_CHUNKS = ((1.0, "log X9"), (4.0, "note W42 ordered by mistake"), (12.0, "bye"))
TWO_RESULTS = {(1, call_key(TWO[0].arguments)): Result({"logged": "X9"}),
               (2, call_key(TWO[1].arguments)): Result({"order_id": "W42", "noted": True})}


def _two(latency_a: float) -> Spec:
    return _spec(TWO_CHUNKS, task=OracleTask("", TWO, "Done.", at_final=frozenset()),
                 results=TWO_RESULTS, latency=lambda c: latency_a if c.id == 1 else 1.0)


def _step_writing_b(stream: streams.Stream) -> int:
    return next(i for i, m in enumerate(stream.messages)
                if m["role"] == "user" and "note W42" in m["content"]) + 1


def _observation_at(at: float) -> tuple[Spec, int, str]:
    """A spec whose first observation arrives at ``at`` s after B's step began writing, the
    index of that step's message, and what the step writes uncut."""
    base = _play(_two(30.0), profile=SLOW)  # A's result far away: B's step is not cut
    index = _step_writing_b(base)
    issued_a = base.meta["calls"][0]["issued_at"]
    return _two(4.0 + SLOW.ttft_s + at - issued_a), index, base.messages[index]["content"]


def test_an_observation_mid_action_waits_until_the_action_is_written() -> None:
    probe, _, whole = _observation_at(0.0)
    think, action = whole.split("</think>", 1)
    assert action == protocol.render_tool_call(TWO[1])
    # 10 characters before the end: inside '…"text":"ordered by mistake"}}</tool_call>'
    spec, index, _ = _observation_at((len(whole) - 10) * SLOW.seconds_per_char)
    stream = _play(spec, profile=SLOW)
    cut = stream.messages[index]
    # the runtime holds the observation back until the call is complete, then cuts the step
    assert cut == {"role": "assistant", "content": whole, "interrupted": True}
    assert stream.messages[index + 1]["content"] == \
        '<observation id="1">{"logged":"X9"}</observation>'
    (interrupt,) = stream.meta["interrupts"]
    assert interrupt["inside"] is None and interrupt["kept"] == len(whole)
    assert interrupt["held_back_from"] < interrupt["t"]
    assert _calls(whole) == [TWO[1]]  # issued once, not written again
    assert all(_calls(m["content"]) != [TWO[1]] for m in stream.messages[index + 1:]
               if m["role"] == "assistant")
    assert data.check(stream, spec) == [] and probe.task == spec.task


def test_an_observation_mid_think_cuts_it_with_think_interrupted() -> None:
    _, _, whole = _observation_at(0.0)
    think = whole.split("</think>", 1)[0]
    spec, index, _ = _observation_at(20 * SLOW.seconds_per_char)  # 20 characters written
    stream = _play(spec, profile=SLOW)
    cut = stream.messages[index]
    assert cut["interrupted"] is True
    assert re.fullmatch(r"<think>[^<]+</think_interrupted>", cut["content"])
    kept = cut["content"].removesuffix(protocol.THINK_INTERRUPTED)
    assert think.startswith(kept) and len(kept) <= 20 and not think[len(kept)].isalnum()
    assert stream.messages[index + 1]["content"] == \
        '<observation id="1">{"logged":"X9"}</observation>'
    assert [i["inside"] for i in stream.meta["interrupts"]] == ["think"]
    assert _calls(stream.messages[index + 2]["content"]) == [TWO[1]]
    assert data.check(stream, spec) == []


def test_an_observation_cuts_a_step_like_any_event() -> None:
    stream = _play(_spec(), profile=SLOW)
    cut = [i for i, m in enumerate(stream.messages) if m.get("interrupted")]
    by_observation = [i for i in cut if stream.messages[i + 1]["content"].startswith(
        "<observation")]
    assert by_observation, "the slow model is writing when find_user's result arrives"
    assert data.check(stream, _spec()) == []


WRONG = (WrongCall(1, "jo@x.com", "al@x.com", {"email": "al@x.com"}, 0.4, "amend"),
         WrongCall(2, "W42", "W17", {"order_id": "W17", "user_id": "u_jo"}, 2.8, "remove"))
WRONG_RESULTS = {**RESULTS,
                 (1, call_key(WRONG[0].arguments)): Result(
                     {"error": {"code": "tool_retry", "message": "User not found"}}, ok=False),
                 (2, call_key(WRONG[1].arguments)): Result({"order_id": "W17"})}


def test_wrong_early_calls_are_amended_or_removed_and_the_gold_calls_stand() -> None:
    spec = _spec(wrong=WRONG, results=WRONG_RESULTS)
    stream = _play(spec)
    messages = stream.messages
    guess = _first_with(messages, "shop.find_user")
    assert messages[guess - 1]["content"] == "<partial_query_update>I</partial_query_update>"
    assert _calls(messages[guess]["content"]) == [ToolCall(1, "shop.find_user",
                                                           {"email": "al@x.com"})]
    amend = next(i for i, m in enumerate(messages) if m["role"] == "assistant"
                 and ToolCall(1, "shop.find_user", GOLD[0].arguments) in _calls(m["content"]))
    assert messages[amend - 1]["content"] == \
        "<partial_query_update>jo@x.com</partial_query_update>"
    # the order id is guessed at "is" (2.8 s), with u_jo known from call 1's result (3.7 s):
    # the guess waits for it, and the right value (3.2 s) comes first; so it is never made
    assert [w["gold"] for w in stream.meta["wrong_calls"]] == [1]
    assert data.check(stream, spec) == []


def test_a_guess_removed_once_the_right_value_is_heard() -> None:
    wrong = (WrongCall(2, "W42", "W17", {"order_id": "W17", "user_id": "u_jo"}, 4.4, "remove"),)
    late = CHUNKS[:5] + ((4.4, "is"), (5.0, "W42."), (5.5, "Please cancel it,"),
                         (6.0, "ordered by mistake."), (6.5, "Thanks."))
    slow_orders = {**LATENCY, "shop.get_order": 1.0}
    spec = _spec(late, wrong=wrong, results=WRONG_RESULTS,
                 latency=lambda call: slow_orders[call.name])
    stream = _play(spec)
    messages = stream.messages
    # u_jo is known at 1.2 + 2.5 = 3.7 s, so the guess goes out at "is" (4.4 s), its result
    # would come at 5.4 s; "W42." (5.0 s) removes it first and issues the gold call anew
    guessed = _first_with(messages, "shop.get_order")
    assert messages[guessed - 1]["content"] == "<partial_query_update>is</partial_query_update>"
    assert _calls(messages[guessed]["content"]) == [
        ToolCall(2, "shop.get_order", {"order_id": "W17", "user_id": "u_jo"})]
    fixed = next(i for i, m in enumerate(messages) if m["role"] == "assistant"
                 and Remove(2) in protocol.parse_all(m["content"]))
    assert messages[fixed - 1]["content"] == "<partial_query_update>W42.</partial_query_update>"
    assert _calls(messages[fixed]["content"]) == [ToolCall(3, "shop.get_order",
                                                           GOLD[1].arguments)]
    assert '<observation id="2">' not in "".join(m["content"] for m in messages)
    assert stream.meta["wrong_calls"][0]["fix"] == "remove"
    assert data.check(stream, spec) == []


def test_a_guess_fixed_at_the_final_update_is_fixed_before_the_commit_point() -> None:
    wrong = (WrongCall(1, "jo@x.com", "al@x.com", {"email": "al@x.com"}, 0.4, "amend"),)
    # the email comes with the last words, with another call's value: the new call is the
    # commit point, so the amend must come first or the guess would be committed
    chunks = ((0.4, "I"), (0.8, "am"), (1.2, "jo@x.com code X9"))
    gold = (GOLD[0], ToolCall(2, "shop.log", {"code": "X9"}))
    results = {**WRONG_RESULTS, (2, call_key(gold[1].arguments)): Result({"logged": "X9"})}
    spec = _spec(chunks, task=OracleTask("", gold, "Done.", at_final=frozenset()), wrong=wrong,
                 results=results)
    stream = _play(spec)
    final = next(i for i, m in enumerate(stream.messages)
                 if m["content"].startswith("<final_query_update>"))
    assert _calls(stream.messages[final + 1]["content"]) == [
        ToolCall(1, "shop.find_user", {"email": "jo@x.com"}), ToolCall(2, "shop.log",
                                                                       {"code": "X9"})]
    assert data.check(stream, spec) == []


def test_the_sync_variant_hears_everything_then_calls_one_at_a_time() -> None:
    spec = _spec(wrong=WRONG, results=WRONG_RESULTS)
    stream = _play(spec, mode="sync", profile="edge")
    messages = stream.messages
    assert messages[1]["content"] == f"<final_query_update>{UTTERANCE}</final_query_update>"
    written = [c for m in messages if m["role"] == "assistant" for c in _calls(m["content"])]
    assert written == list(GOLD)
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and _calls(message["content"]):
            assert len(_calls(message["content"])) == 1
            number = _calls(message["content"])[0].id
            if number > 1:
                assert messages[i - 1]["content"].startswith(f'<observation id="{number - 1}">')
    assert stream.meta["wrong_calls"] == [] and stream.meta["interrupts"] == []
    assert data.check(stream, spec) == []


def test_same_seed_same_stream_and_a_missing_result_is_named() -> None:
    spec = _spec(wrong=WRONG, results=WRONG_RESULTS)
    assert _play(spec, profile="edge").messages == _play(spec, profile="edge").messages
    broken = _spec(results={k: v for k, v in RESULTS.items() if k[0] != 2})
    with pytest.raises(streams.SimulationError, match="no result for shop.get_order"):
        _play(broken)


def test_the_scripted_gateway_answers_from_the_spec_and_cascades_as_the_gateway() -> None:
    spec = _spec(wrong=WRONG, results=WRONG_RESULTS)
    edge = ScriptedGateway(spec)

    async def run() -> None:
        async with edge.client(WallClock()) as gateway:
            assert await gateway.tools() == list(TOOLS)
            session = (await gateway.create_session())["id"]

            async def issue(client: str, call: ToolCall, depends_on: tuple[str, ...] = (),
                            supersedes: str | None = None) -> dict[str, Any]:
                return await gateway.issue(session, tool=call.name, arguments=call.arguments,
                                           client_call_id=client, depends_on=list(depends_on),
                                           supersedes=supersedes)

            guess = await issue("1", ToolCall(1, "shop.find_user", WRONG[0].arguments))
            assert guess["status"] == "failed" and call_records.observation(guess) == \
                WRONG_RESULTS[(1, call_key(WRONG[0].arguments))].payload
            found = await issue("2", GOLD[0])
            order = await issue("3", GOLD[1], depends_on=("2",))
            cancel = await issue("4", GOLD[2], depends_on=("3",))
            assert (found["result"], cancel["status"]) == ({"user_id": "u_jo"}, "staged")
            # the cascade: the call removed and, transitively, what depends on it
            gone = await gateway.cancel(order["id"], "removed by the agent")
            assert [(v["client_call_id"], v["status"]) for v in gone] == \
                [("3", "cancelled"), ("4", "cancelled")]
            amended = await issue("2", GOLD[0], supersedes="2")
            assert amended["supersedes"] == found["id"]
            turn = (await gateway.session(session))["turns"][0]
            assert [c["status"] for c in turn["calls"]] == \
                ["failed", "cancelled", "cancelled", "cancelled", "succeeded"]
            committed = await gateway.commit(session, turn["id"], ["2"])
            assert [c["status"] for c in committed["calls"]][-1] == "committed"
            await gateway.open_turn(session)
            with pytest.raises(GatewayError, match="no result for shop.log"):
                await issue("5", ToolCall(5, "shop.log", {"code": "nope"}))
        assert edge.problem is not None and edge.refused is not None and edge.refused.is_set()

    asyncio.run(run())


def test_a_step_the_runtime_refuses_abandons_the_stream(monkeypatch: pytest.MonkeyPatch,
                                                        ) -> None:
    # the model answers before the user has finished: the runtime answers with <error>
    early = OracleTask("", (), "Done.", at_final=frozenset())
    spec = _spec(((0.4, "I"), (30.0, "bye")), task=early)
    original = Author.write

    def hasty(self: Author, context: Any) -> str:
        return "<answer>Done.</answer>" if len(context.segments) == 1 else original(self,
                                                                                     context)

    monkeypatch.setattr(Author, "write", hasty)
    with pytest.raises(streams.SimulationError,
                       match="the runtime refused a step: the user has not finished"):
        _play(spec)

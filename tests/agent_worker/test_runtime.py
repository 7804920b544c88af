"""The runtime against a real gateway (demo shop, real Postgres) with a scripted model, on a
simulated clock: the order of events is fixed by the script's times, so each test plays one
exact interleaving of speech, model output and tool results."""

from __future__ import annotations

import pytest

from agent_worker import inputs
from agent_worker.errors import TurnFailed
from agent_worker.runtime import AgentConfig, TurnResult
from tests.agent_worker.conftest import Run, World
from tests.agent_worker.scripted import Rule, ScriptedModel, call, on

ANN = [(0.5, "This is Ann,"), (1.0, "two bags of espresso"), (1.5, "please.")]


def test_speculates_then_commits_at_the_answer(world: World) -> None:
    run = world.run([
        on("This is Ann", "<think>Ann: open an order</think>", call(1, "create_order",
                                                                    customer="Ann")),
        on("espresso", call(2, "add_item", [1], order_id="$1.order_id", sku="espresso",
                            quantity=2)),
        on("<final_query_update>", "<answer>", "Two bags of espresso for Ann.", "</answer>"),
    ], ANN)
    assert run.error is None, f"{run.error!r}\n{run.dump()}"
    assert run.result is not None
    assert run.result.answer == "Two bags of espresso for Ann."
    assert [c["status"] for c in run.calls()] == ["committed", "committed"]
    shop = world.shop()
    assert shop["demo_order_items"] == [{"order_id": "O-ann-1", "sku": "espresso",
                                         "quantity": 2}]
    # Both calls were issued while Ann was still speaking, before the final update.
    posted = [r["t"] for r in run.trace.of("call_posted")]
    assert max(posted) < 1.5
    assert run.result.post_turn_latency is not None
    assert 0 < run.result.post_turn_latency < 0.5


def test_what_the_user_said_is_recorded_for_the_session_timeline(world: World) -> None:
    run = world.run([
        on("This is Ann", call(1, "create_order", customer="Ann")),
        on("<final_query_update>", "<answer>", "An order for Ann.", "</answer>"),
    ], ANN)
    assert run.error is None, f"{run.error!r}\n{run.dump()}"
    chunks = world.api.get(f"/v1/sessions/{run.session['id']}/transcript").json()
    assert " ".join(c["text"] for c in chunks) == " ".join(t.strip() for _, t in ANN)
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert {c["turn_id"] for c in chunks} == {run.session["turns"][0]["id"]}


def _latency(**per_tool: float) -> AgentConfig:
    """Declared tool latency per demo tool (the others: none)."""
    return AgentConfig(tool_latency=lambda c: per_tool.get(c.name.removeprefix("demo."), 0.0))


def _ok(run: Run) -> TurnResult:
    assert run.error is None, f"{run.error!r}\n{run.dump()}"
    assert run.result is not None
    return run.result


def _items(world: World) -> list[tuple[str, int]]:
    return [(i["sku"], i["quantity"]) for i in world.shop()["demo_order_items"]]


def _stock(world: World, sku: str) -> int:
    return next(p["stock"] for p in world.shop()["demo_products"] if p["sku"] == sku)


# Interruption ---------------------------------------------------------------------------------

def test_interrupt_mid_think_keeps_the_thought_and_injects_the_chunk(world: World) -> None:
    run = world.run([
        on("I'd like", "<think>The user", " wants something,", " maybe coffee", "</think>",
           "<pause/>", every=0.2),
        on("a kettle", "<think>a kettle</think>", call(1, "list_products")),
        on("<final_query_update>", "<answer>", "We have one kettle.", "</answer>"),
    ], [(0.5, "I'd like"), (0.9, "a kettle"), (1.5, "thanks.")])
    _ok(run)
    # The first generation wrote two pieces (0.6, 0.8) before the chunk at 0.9 stopped it.
    assert run.model.closed == 1
    interrupt = run.trace.first("interrupt")
    assert interrupt is not None and interrupt["in_tag"] == "think" and interrupt["t"] == 0.9
    assert ("<think>The user wants something,</think_interrupted>"
            "<partial_query_update>a kettle</partial_query_update>") in run.model.shown(1)
    assert "maybe coffee" not in run.model.shown(-1)


def _half_written_call(world: World, config: AgentConfig | None = None) -> Run:
    half, rest = call(1, "create_order", customer="Bob").split('"name"')
    return world.run([
        on("This is", half, '"name"' + rest, every=0.5),
        on("Ann", call(1, "create_order", customer="Ann")),
        on("<final_query_update>", "<answer>", "Order opened for Ann.", "</answer>"),
    ], [(0.5, "This is"), (0.8, "Ann"), (1.5, "thanks.")], config)


def test_an_event_waits_for_the_call_being_written_then_interrupts(world: World) -> None:
    run = _half_written_call(world)
    _ok(run)
    held = run.trace.first("held_back")
    assert held is not None and "Ann" in held["text"]
    # the call was finished (Bob), then the user's words were shown and the call amended
    assert [c["arguments"] for c in run.calls()] == [{"customer": "Bob"}, {"customer": "Ann"}]
    interrupt = run.trace.first("interrupt")
    assert interrupt is not None and interrupt["in_tag"] is None and interrupt["dropped"] == ""
    assert '"customer": "Bob"' in run.model.shown(1).replace('":"', '": "')
    assert [o["customer"] for o in world.shop()["demo_orders"]] == ["Ann"]


def test_interrupt_drops_a_half_written_call(world: World) -> None:
    run = _half_written_call(world, AgentConfig(finish_actions=False))
    _ok(run)
    assert [c["arguments"] for c in run.calls()] == [{"customer": "Ann"}]
    interrupt = run.trace.first("interrupt")
    assert interrupt is not None and interrupt["in_tag"] == "tool_call"
    assert "Bob" not in run.model.shown(1)
    assert [o["customer"] for o in world.shop()["demo_orders"]] == ["Ann"]


# Amend and remove -----------------------------------------------------------------------------

CORRECTION = [(0.5, "This is Ann, two espresso"), (1.0, "no wait, one grinder"),
              (2.5, "thanks.")]
# Both calls in one piece: the observation of call 1 arrives at once (no tool latency) and
# would otherwise interrupt the model before it writes call 2.
ORDER = (call(1, "create_order", customer="Ann")
         + call(2, "add_item", [1], order_id="$1.order_id", sku="espresso", quantity=2))
AMEND = call(2, "add_item", [1], order_id="$1.order_id", sku="grinder", quantity=1)


def _answer() -> Rule:
    return on("<final_query_update>", "<answer>", "One grinder for Ann.", "</answer>")


def test_amend_before_the_call_ran_never_reaches_the_gateway(world: World) -> None:
    """Call 2 waits for call 1 (1 s of tool latency) when the user corrects themselves: the
    amended version replaces it before it was ever posted."""
    run = world.run([on("This is Ann", ORDER), on("grinder", AMEND), _answer()], CORRECTION,
                    _latency(create_order=1.0))
    _ok(run)
    assert [(c["client_call_id"], c["status"]) for c in run.calls()] == [
        ("1", "committed"), ("2", "committed")]
    assert run.final(2)["arguments"]["sku"] == "grinder"
    assert [r["version"] for r in run.trace.of("call_posted", id=2)] == [2]
    assert _items(world) == [("grinder", 1)]
    assert _stock(world, "espresso") == 20


def test_amend_after_the_call_ran_supersedes_it_in_the_gateway(world: World) -> None:
    run = world.run([on("This is Ann", ORDER), on("grinder", AMEND), _answer()], CORRECTION)
    _ok(run)
    calls = run.calls()
    assert [(c["client_call_id"], c["status"]) for c in calls] == [
        ("1", "committed"), ("2", "cancelled"), ("2", "committed")], run.dump()
    assert calls[1]["arguments"]["sku"] == "espresso"
    assert calls[2]["supersedes"] == calls[1]["id"]
    assert _items(world) == [("grinder", 1)]
    assert _stock(world, "espresso") == 20 and _stock(world, "grinder") == 2


@pytest.mark.parametrize("latency", [0.0, 1.0], ids=["dependent-posted", "dependent-waiting"])
def test_remove_cascades_to_dependents(world: World, latency: float) -> None:
    """Removing call 1 drops call 2 that depends on it: in the gateway's cascade when 2 was
    posted, in the runtime when 2 still waited for 1's result. Either way the model is told."""
    run = world.run([
        on("Ann here", call(1, "create_order", customer="Ann")
           + call(2, "add_item", [1], order_id="$1.order_id", sku="kettle")),
        on("forget the order", "<remove>1</remove>"),
        on('<cancelled id="2">', call(3, "list_products")),
        on("<final_query_update>", "<answer>", "Here are our prices.", "</answer>"),
    ], [(0.5, "Ann here, an order with a kettle"), (1.2, "actually, forget the order"),
        (2.5, "just the prices.")], _latency(create_order=latency))
    _ok(run)
    statuses = {c["client_call_id"]: c["status"] for c in run.calls()}
    assert statuses == {"1": "cancelled", "3": "committed"} | (
        {"2": "cancelled"} if latency == 0 else {})
    assert "call 1, which it depends on, was removed" in run.model.shown(-1)
    assert world.shop()["demo_orders"] == []
    assert _stock(world, "kettle") == 1


# Observations and the commit point ------------------------------------------------------------

def test_observation_after_the_final_update_is_awaited_by_the_commit(world: World) -> None:
    run = world.run([
        on("Ann", call(1, "create_order", customer="Ann")
           + call(2, "add_item", [1], order_id="$1.order_id", sku="filter")),
        on("<final_query_update>", "<pause/>"),
        on('<observation id="2">', "<answer>", "Filters added.", "</answer>"),
    ], [(0.5, "Ann, one pack of filters"), (1.0, "please.")], _latency(add_item=1.0))
    result = _ok(run)
    observed = run.trace.first("observation", id=2)
    commit = run.trace.first("commit_start")
    assert observed is not None and commit is not None
    assert observed["t"] == pytest.approx(1.6) and result.last_word_at == 1.0
    assert commit["t"] >= observed["t"]  # the commit point (pause, 1.1) waited for call 2
    assert run.trace.first("commit_point")["t"] == pytest.approx(1.1)  # type: ignore[index]
    assert [c["status"] for c in run.calls()] == ["committed", "committed"]
    assert _items(world) == [("filter", 1)]


def test_commit_point_new_call_commits_and_opens_the_next_turn(world: World) -> None:
    run = world.run([
        on("Ann", call(1, "create_order", customer="Ann")
           + call(2, "add_item", [1], order_id="$1.order_id", sku="kettle")),
        on("<final_query_update>", call(3, "place_order", [1], order_id="$1.order_id",
                                        card_last4="4242")),
        on('<observation id="3">', "<answer>", "Placed.", "</answer>"),
    ], [(0.5, "Ann, a kettle"), (1.0, "and place it with card 4242.")])
    _ok(run)
    turns = run.session["turns"]
    assert [t["status"] for t in turns] == ["committed", "committed"]
    assert [c["client_call_id"] for c in turns[0]["calls"]] == ["1", "2"]
    placed = turns[1]["calls"][0]
    # Call 1 is in a committed turn: its placeholder was resolved by the agent.
    assert placed["arguments"] == {"order_id": "O-ann-1", "card_last4": "4242"}
    assert placed["status"] == "committed"
    assert world.shop()["demo_orders"][0]["status"] == "placed"
    assert world.shop()["demo_payments"][0]["card_last4"] == "4242"
    # The first turn committed before call 3 went out (in the trace's order: the simulated
    # clock stands still during gateway requests, so both may carry the same time).
    records = run.trace.records
    first_commit = records.index(run.trace.of("commit_done")[0])
    assert first_commit < records.index(run.trace.of("call_posted", id=3)[0])


def test_commit_point_pause_then_told_to_answer(world: World) -> None:
    run = world.run([
        on("Ann", call(1, "create_order", customer="Ann")),
        on("<final_query_update>", "<pause/>"),
        on("answer now", "<answer>", "Your order is open.", "</answer>"),
    ], [(0.5, "Ann, open an order"), (1.0, "please.")])
    _ok(run)
    point = run.trace.first("commit_point")
    done = run.trace.first("commit_done")
    assert point is not None and done is not None
    assert point["t"] == pytest.approx(1.1)
    assert run.trace.first("model_error") is not None
    assert [c["status"] for c in run.calls()] == ["committed"]


def test_answer_before_the_final_update_is_an_error(world: World) -> None:
    run = world.run([
        on("Ann", "<answer>", "Sure!", "</answer>"),
        on("<error>", "<pause/>"),
        on("<final_query_update>", "<answer>", "Hello Ann.", "</answer>"),
    ], [(0.5, "Ann speaking"), (1.5, "hello.")])
    result = _ok(run)
    assert result.answer == "Hello Ann."
    assert "do not answer before the final query update" in run.model.shown(1)


def test_tool_failure_is_an_observation(world: World) -> None:
    run = world.run([
        on("Ann", call(1, "create_order", customer="Ann")
           + call(2, "add_item", [1], order_id="$1.order_id", sku="unicorn")),
        on("<final_query_update>", "<answer>", "We have no unicorns.", "</answer>"),
    ], [(0.5, "Ann, a unicorn"), (1.0, "please.")])
    _ok(run)
    observation = run.trace.first("observation", id=2)
    assert observation is not None and "unknown product" in str(observation["payload"])
    assert [c["status"] for c in run.calls()] == ["committed", "failed"]


# Malformed model output -----------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "message"), [
    ('<tool_call>{"id": 1, "name": "demo.create_order", "arguments": {}</tool_call>',
     "valid JSON"),
    (call(1, "teleport"), "unknown tool 'demo.teleport'"),
    ('<observation id="1">{}</observation>', "written by the runtime"),
    (call(3, "list_products") + call(2, "list_products"), "greater than 3"),
    ('<tool_call>{"id": 1, "name"', "stopped inside <tool_call>"),
    ("Sure, let me do that.", "text outside a tag"),
    ("<think>hmm</think>", "each step ends with an action"),
], ids=["bad-json", "unknown-tool", "injected-tag", "non-growing-id", "stops-mid-tag",
        "stray-text", "no-action"])
def test_malformed_output_is_answered_with_an_error(world: World, bad: str,
                                                    message: str) -> None:
    run = world.run([
        on("Ann", bad),
        on("<error>", call(5, "create_order", customer="Ann")),
        on("<final_query_update>", "<answer>", "Done.", "</answer>"),
    ], [(0.5, "Ann, open an order"), (1.5, "please.")])
    _ok(run)
    error = run.trace.first("model_error")
    assert error is not None and message in error["message"]
    assert "<error>" in run.model.shown(1)
    assert [c["tool"] for c in run.calls() if c["tool"] == "demo.create_order"] == [
        "demo.create_order"]


def test_too_many_errors_fail_the_turn_and_cancel_it(world: World) -> None:
    run = world.run([
        on("Ann", call(1, "create_order", customer="Ann") + "garbage"),
        *[on("<error>", "garbage") for _ in range(5)],
    ], [(0.5, "Ann, open an order"), (3.0, "please.")])
    assert isinstance(run.error, TurnFailed)
    assert run.session["turns"][0]["status"] == "cancelled", run.dump()
    assert [c["status"] for c in run.calls()] == ["cancelled"]
    assert world.shop()["demo_orders"] == []


# The synchronous baseline ---------------------------------------------------------------------

def test_sync_mode_waits_for_the_whole_utterance(world: World) -> None:
    utterance = "This is Ann, two bags of espresso please."
    run = world.run([
        on(utterance, call(1, "create_order", customer="Ann")),
        on('<observation id="1">', call(2, "add_item", [1], order_id="$1.order_id",
                                         sku="espresso", quantity=2)),
        on('<observation id="2">', "<answer>", "Done.", "</answer>"),
    ], ANN, AgentConfig(mode="sync"))
    result = _ok(run)
    assert "partial_query_update" not in run.model.shown(-1)
    assert f"<final_query_update>{utterance}</final_query_update>" in run.model.shown(0)
    assert min(r["t"] for r in run.trace.of("call_posted")) > 1.5
    assert result.post_turn_latency is not None and result.post_turn_latency > 0.3
    assert _items(world) == [("espresso", 2)]


def test_a_kept_call_failing_at_commit_is_shown_and_the_model_answers_again(
        world: World) -> None:
    """Two staged place_order calls pass their preflight; at commit the second finds the order
    already placed. The first answer is held back, the model sees the failure and answers
    again; the turn stays committed with one payment."""
    run = world.run([
        on("Ann", call(1, "create_order", customer="Ann")
           + call(2, "add_item", [1], order_id="$1.order_id", sku="kettle")),
        on("4242", call(3, "place_order", [1], order_id="$1.order_id", card_last4="4242")
           + call(4, "place_order", [1], order_id="$1.order_id", card_last4="1111")),
        on("<final_query_update>", "<answer>", "Placed twice.", "</answer>"),
        on("already placed", "<answer>", "Placed with card 4242.", "</answer>"),
    ], [(0.5, "Ann, a kettle"), (1.0, "card 4242"), (1.5, "thanks.")])
    result = _ok(run)
    assert result.answer == "Placed with card 4242."
    assert [a["text"] for a in run.trace.of("action", action="answer")] == [
        "Placed twice.", "Placed with card 4242."]
    assert [c["status"] for c in run.calls()] == ["committed", "committed", "committed",
                                                   "failed"]
    assert "already placed" in str(run.final(4)["error"])
    assert [p["card_last4"] for p in world.shop()["demo_payments"]] == ["4242"]


def test_a_second_utterance_uses_a_committed_result_in_a_new_turn(world: World) -> None:
    """Ids keep growing across the session; call 2 names committed call 1 by placeholder, which
    the agent resolves itself (the gateway only knows the calls of the open turn)."""
    first = [(0.5, "This is Ann,"), (1.0, "open an order.")]
    second = [(0.5, "Add a kettle"), (1.0, "to it.")]
    run = world.play(
        lambda clock: ScriptedModel(clock, [
            on("This is Ann", call(1, "create_order", customer="Ann")),
            on("open an order", "<answer>", "Opened.", "</answer>"),
            on("Add a kettle", call(2, "add_item", [1], order_id="$1.order_id",
                                    sku="kettle")),
            on("to it", "<answer>", "Added.", "</answer>"),
        ]),
        lambda clock: inputs.timed_chunks(clock, first),
        lambda clock: inputs.timed_chunks(clock, second))
    _ok(run)
    assert [r.answer for r in run.results] == ["Opened.", "Added."]
    turns = run.session["turns"]
    assert [t["status"] for t in turns] == ["committed", "committed"]
    assert turns[1]["calls"][0]["arguments"] == {"order_id": "O-ann-1", "sku": "kettle"}
    assert _items(world) == [("kettle", 1)]


@pytest.mark.parametrize("edit", ["remove", "amend"])
def test_a_replay_conflict_is_reported_as_cancelled(world: World, edit: str) -> None:
    """Undoing call 1 replays call 2, whose order number now comes out different: the gateway
    makes it ``conflict`` (in the cancel's answer for a remove; found by reading the turn back
    after an amend) and the model is told, and issues it again."""
    change = ("<remove>1</remove>" if edit == "remove"
              else call(1, "create_order", customer="Anne"))
    run = world.run([
        on("two orders", call(1, "create_order", customer="Ann")
           + call(2, "create_order", customer="Ann")),
        on("the first", change),
        on('<cancelled id="2">', call(3, "create_order", customer="Ann")),
        on("<final_query_update>", "<answer>", "Done.", "</answer>"),
    ], [(0.5, "Ann wants two orders"), (1.0, "no, the first one is wrong"), (2.0, "ok.")])
    _ok(run)
    assert run.final(2)["status"] == "conflict"
    assert '<cancelled id="2">conflict' in run.model.shown(-1)
    orders = sorted(o["id"] for o in world.shop()["demo_orders"])
    assert orders == (["O-ann-1"] if edit == "remove" else ["O-ann-1", "O-anne-1"])

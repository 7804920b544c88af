"""The scripted oracle: gold calls at the earliest moment their inputs are heard, a declared
latency profile for its time; and the synchronous baseline that shares the runtime."""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker import inputs, protocol
from agent_worker.backends.oracle import Correction, OracleBackend, OracleTask
from agent_worker.clock import VirtualClock
from agent_worker.model import Context, LatencyProfile, profile
from agent_worker.runtime import AgentConfig
from agent_worker.session import parse_latency
from tests.agent_worker.conftest import Run, World

TASK = OracleTask.from_json({
    "name": "ann-espresso-grinder",
    "utterance": "Hi, this is Ann. I would like 2 bags of espresso and a hand grinder, "
                 "and that is all for today, thank you very much.",
    "calls": [
        {"id": 1, "name": "demo.create_order", "arguments": {"customer": "Ann"}},
        {"id": 2, "name": "demo.add_item", "depends_on": [1],
         "arguments": {"order_id": "$1.order_id", "sku": "espresso", "quantity": 2}},
        {"id": 3, "name": "demo.add_item", "depends_on": [1],
         "arguments": {"order_id": "$1.order_id", "sku": "grinder"}},
    ],
    "answer": "Your order has 2 bags of espresso and a grinder.",
})


def _context(*segments: tuple[str, str]) -> Context:
    return Context("", tuple(segments))  # type: ignore[arg-type]


def _oracle(parallel: bool = True) -> OracleBackend:
    return OracleBackend(TASK, VirtualClock(), profile("instant"), parallel=parallel)


def _update(text: str, final: bool = False) -> tuple[str, str]:
    return ("user", protocol.render_update(text, final=final))


def test_issues_each_call_once_its_values_are_heard() -> None:
    oracle = _oracle()
    assert oracle.decide(_context(_update("Hi, this is"))) == "<pause/>"
    first = oracle.decide(_context(_update("Hi, this is Ann.")))
    assert protocol.parse_all(first) == [protocol.ToolCall(1, "demo.create_order",
                                                           {"customer": "Ann"})]
    heard = [_update("Hi, this is Ann."), ("assistant", first),
             ("user", protocol.render_observation(1, {"order_id": "O-ann-1"})
              + protocol.render_update("I would like 2 bags of espresso", final=False))]
    second = protocol.parse_all(oracle.decide(_context(*heard)))
    assert second == [protocol.ToolCall(2, "demo.add_item", {
        "order_id": "$1.order_id", "sku": "espresso", "quantity": 2}, (1,))]


def test_at_the_final_update_everything_is_known_and_the_answer_waits_for_results() -> None:
    oracle = _oracle()
    calls = oracle.decide(_context(_update("Ann wants beans and a grinder", final=True)))
    issued = [e for e in protocol.parse_all(calls) if isinstance(e, protocol.ToolCall)]
    assert [c.id for c in issued] == [1, 2, 3]
    shown = [_update("...", final=True), ("assistant", calls),
             ("user", protocol.render_observation(1, {}) + protocol.render_observation(2, {}))]
    assert oracle.decide(_context(*shown)) == "<pause/>"  # call 3 has no result yet
    shown[-1] = ("user", shown[-1][1] + protocol.render_observation(3, {}))
    assert oracle.decide(_context(*shown)) == f"<answer>{TASK.answer}</answer>"


def test_a_call_cut_off_or_cancelled_is_issued_again_with_a_new_id() -> None:
    oracle = _oracle()
    first = oracle.decide(_context(_update("this is Ann")))
    shown = [_update("this is Ann"), ("assistant", first),
             ("user", protocol.render_cancelled(1, "conflict"))]
    again = protocol.parse_all(oracle.decide(_context(*shown)))
    assert again == [protocol.ToolCall(2, "demo.create_order", {"customer": "Ann"})]


def test_sequential_mode_issues_one_call_per_observed_step() -> None:
    oracle = _oracle(parallel=False)
    final = _update(TASK.utterance, final=True)
    first = oracle.decide(_context(final))
    assert [e.id for e in protocol.parse_all(first)] == [1]  # type: ignore[union-attr]
    shown = [final, ("assistant", first)]
    assert oracle.decide(_context(*shown)) == "<pause/>"
    shown.append(("user", protocol.render_observation(1, {"order_id": "O-ann-1"})))
    assert [e.id for e in protocol.parse_all(oracle.decide(_context(*shown)))] == [2]  # type: ignore[union-attr]


def test_latency_profile_costs_declared_time() -> None:
    edge = profile("edge")
    assert edge == LatencyProfile("edge", 0.15, 120.0)
    assert edge.seconds("x" * 48) == pytest.approx(0.15 + 12 / 120)
    assert profile("instant").seconds("x" * 1000) == 0.0
    with pytest.raises(ValueError, match="unknown latency profile"):
        profile("warp")


def _oracle_run(world: World, sync: bool) -> Run:
    config = AgentConfig(mode="sync" if sync else "speculative",
                         tool_latency=parse_latency("0.5"))
    return world.play(
        lambda clock: OracleBackend(TASK, clock, profile("edge"), parallel=not sync),
        lambda clock: inputs.spoken_text(clock, TASK.utterance), config=config)


def _order(world: World) -> list[dict[str, Any]]:
    return world.shop()["demo_order_items"]


def test_speculative_oracle_beats_the_synchronous_baseline_with_the_same_outcome(
        world: World) -> None:
    speculative = _oracle_run(world, sync=False)
    assert speculative.error is None, f"{speculative.error!r}\n{speculative.dump()}"
    spec_items = _order(world)
    world.reset()
    baseline = _oracle_run(world, sync=True)
    assert baseline.error is None, f"{baseline.error!r}\n{baseline.dump()}"
    assert spec_items == _order(world) == [
        {"order_id": "O-ann-1", "sku": "espresso", "quantity": 2},
        {"order_id": "O-ann-1", "sku": "grinder", "quantity": 1}]
    assert speculative.result and baseline.result
    assert speculative.result.answer == baseline.result.answer == TASK.answer
    spec, base = speculative.result.post_turn_latency, baseline.result.post_turn_latency
    assert spec is not None and base is not None
    # Simulated time: every call was issued (and its 0.5 s spent) while Ann was speaking.
    print(f"post-turn latency: speculative {spec:.3f} s, baseline {base:.3f} s")
    assert spec < 0.5 < 1.5 < base, speculative.dump(200)
    last_word = speculative.result.last_word_at
    assert all(r["t"] < last_word for r in speculative.trace.of("call_posted"))  # type: ignore[operator]
    assert all(c["status"] == "committed" for c in speculative.calls() + baseline.calls())


def test_a_task_file_sets_every_field_of_the_oracle_task() -> None:
    task = OracleTask.from_json({
        "utterance": "I am Ann, cancel order 7, no, order 8", "answer": "Done.",
        "calls": [{"id": 1, "name": "demo.find", "arguments": {"customer": "Ann"}},
                  {"id": 2, "name": "demo.cancel", "arguments": {"order": "8"},
                   "depends_on": [1]}],
        "at_final": ["8"], "after": {"2": [1]}, "ordered": [2],
        "corrections": [{"wrong": "7", "right": "8"}]})
    assert task.at_final == frozenset({"8"}) and task.after == {2: (1,)}
    assert task.ordered == frozenset({2})
    assert task.corrections == (Correction("7", "8"),)
    assert task.calls[1].depends_on == (1,)

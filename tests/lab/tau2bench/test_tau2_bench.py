"""``specgate bench tau2``: the streaming replay of τ² tasks, baseline and speculative side by
side through a real gateway server (child process) on the tests' Postgres, graded by τ²'s own
DB hash; and the pieces it is made of — the utterance, correction streams, the oracle's
handling of them, and the ideal bound — on hand-checked examples.

The full runs are ``specgate bench tau2 --domain retail|airline [--corrections] --profile
cloud|edge --out DIR``; here two tasks per domain, with and without corrections.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent_worker import protocol
from agent_worker.backends.oracle import (
    Correction,
    OracleBackend,
    OracleTask,
    mention_at,
    mentions,
)
from agent_worker.clock import VirtualClock
from agent_worker.model import Context, profile
from agent_worker.protocol import ToolCall
from agent_worker.runtime import AgentConfig
from lab.tau2bench import ideal
from lab.tau2bench.gold import gold_values
from lab.tau2bench.tau2_corrections import with_correction
from lab.tau2bench.tau2_stream import (
    chunks_of,
    first_person,
    heard_at,
    utterance,
)
from tests.conftest import make_settings

# The end-to-end tasks: retail 0 (a sensitive exchange after reads chained on results; its
# order id is said wrong and corrected: the wrong order is read, then the read amended) and
# 33 (a reversible address change whose city is said wrong: the wrong write really runs, held,
# then is amended); airline 2 (a certificate for a user id said wrong) and 7 (a flight change
# and two cancellations, a reservation id said wrong).
E2E_TASKS = {"retail": ("0", "33"), "airline": ("2", "7")}


# Pieces ------------------------------------------------------------------------------------


def test_values_are_heard_as_whole_tokens() -> None:
    assert mentions("My order is #W2378156.", "#w2378156")
    assert not mentions("I know", "no") and mentions("no, thanks", "no")
    assert not mentions("price 12", "2") and mentions('{"quantity":2}', "2")
    assert mention_at("a b a", "a", 1) == 4


def test_the_utterance_is_the_known_info_and_the_request_in_the_users_voice() -> None:
    instructions = SimpleNamespace(
        known_info="You are Yusuf Rossi in zip code 19122.",
        reason_for_call="You want to return your order #W2378156.",
        unknown_info="You do not remember your email address.",
        task_instructions="You are calm. If the agent asks, pay with your gift card "
                          "gift_card_123.")
    text = utterance(instructions, ["Yusuf", "19122", "#W2378156", "gift_card_123"])
    # Only the instruction sentence carrying a needed value is said, in the user's voice.
    assert text == ("I am Yusuf Rossi in zip code 19122. I want to return my order "
                    "#W2378156. If the agent asks, pay with my gift card gift_card_123.")
    assert first_person("Tell the agent your name; they told you so.") == \
        "Tell the agent my name; they told me so."
    chunks = chunks_of(text)  # 150 words/min: 0.4 s a word, ~0.5 s chunks
    assert chunks[0] == (0.4, "I") and chunks[1] == (0.8, "am")
    assert heard_at(chunks, "19122") == pytest.approx(3.2)  # the 8th word ends at 3.2 s
    assert heard_at(chunks, "gift_card_9") is None


def test_a_correction_says_the_wrong_value_then_the_right_one_four_words_later() -> None:
    text = "I received my order #W2378156 and wish to exchange the keyboard for a new one"
    said = with_correction(text, "#W2378156", "#W6679257")
    assert said == ("I received my order #W6679257 and wish to exchange sorry, I meant "
                    "#W2378156, the keyboard for a new one")
    assert mention_at(said, "#W6679257") < mention_at(said, "#W2378156")
    # A later mention of the right value within the four words: corrected just before it.
    assert with_correction("zip 19122 or maybe 19122 again", "19122", "19123") == \
        "zip 19123 or maybe sorry, I meant 19122, 19122 again"


def test_a_correction_of_a_tau2_task_targets_a_spoken_argument_of_its_write() -> None:
    pytest.importorskip("tau2")
    from lab.conformance import reference
    from lab.tau2bench.tau2_corrections import inject

    task, steps = _gold("retail", "0")
    plain = utterance(task.user_scenario.instructions, gold_values(steps))
    injected = inject("retail", plain, steps)
    assert not isinstance(injected, str)
    assert (injected.kind, injected.argument, injected.correction.right) == \
        ("write", "order_id", "#W2378156")
    wrong = injected.correction.wrong  # another order of the same customer, from τ²'s seed
    assert reference.seed_data("retail")["orders"][wrong]["user_id"] == "yusuf_rossi_9620"
    assert 0 <= mention_at(injected.text, wrong) < mention_at(injected.text, "#W2378156")
    assert mention_at(plain, wrong) < 0


def _context(*segments: tuple[str, str]) -> Context:
    return Context("", tuple(segments))  # type: ignore[arg-type]


def _update(text: str, final: bool = False) -> tuple[str, str]:
    return ("user", protocol.render_update(text, final=final))


def test_the_oracle_believes_a_wrong_value_until_corrected_then_amends_its_call() -> None:
    task = OracleTask("", (ToolCall(1, "retail.get_order_details", {"order_id": "#W1"}),),
                      "Done.", corrections=(Correction("#W2", "#W1"),))
    oracle = OracleBackend(task, VirtualClock(), profile("instant"))
    first = oracle.decide(_context(_update("my order #W2")))
    assert protocol.parse_all(first) == [ToolCall(1, "retail.get_order_details",
                                                  {"order_id": "#W2"})]
    shown = [_update("my order #W2"), ("assistant", first),
             ("user", protocol.render_observation(1, {"order_id": "#W2"})
              + protocol.render_update("sorry, I meant #W1", final=True))]
    amend = oracle.decide(_context(*shown))  # the same id: an amend
    assert protocol.parse_all(amend) == [ToolCall(1, "retail.get_order_details",
                                                  {"order_id": "#W1"})]
    shown += [("assistant", amend), ("user", protocol.render_observation(1, {}))]
    assert oracle.decide(_context(*shown)) == "<answer>Done.</answer>"


def test_a_write_whose_predecessor_left_the_turn_is_removed_and_both_issued_in_order(
        ) -> None:
    cancel = "airline.cancel_reservation"
    task = OracleTask("", (ToolCall(1, cancel, {"reservation_id": "R1"}),
                           ToolCall(2, cancel, {"reservation_id": "R2"})),
                      "Done.", after={2: (1,)}, ordered=frozenset({1, 2}))
    oracle = OracleBackend(task, VirtualClock(), profile("instant"))
    first = oracle.decide(_context(_update("cancel R1 and R2")))
    assert [c.id for c in protocol.parse_all(first)] == [1, 2]  # type: ignore[union-attr]
    shown = [_update("cancel R1 and R2"), ("assistant", first),
             ("user", protocol.render_cancelled(1, "conflict")
              + protocol.render_observation(2, {}))]
    assert oracle.decide(_context(*shown)) == "<remove>2</remove>"
    shown.append(("assistant", "<remove>2</remove>"))
    assert protocol.parse_all(oracle.decide(_context(*shown))) == [
        ToolCall(3, cancel, {"reservation_id": "R1"}),
        ToolCall(4, cancel, {"reservation_id": "R2"})]


def test_values_only_a_result_shows_wait_for_it_after_the_final_update() -> None:
    task = OracleTask("", (ToolCall(1, "retail.get_order_details", {"order_id": "#W1"}),
                           ToolCall(2, "retail.get_product_details", {"product_id": "P9"})),
                      "Done.", at_final=frozenset())
    oracle = OracleBackend(task, VirtualClock(), profile("instant"))
    first = oracle.decide(_context(_update("order #W1", final=True)))
    assert [c.id for c in protocol.parse_all(first)] == [1]  # type: ignore[union-attr]
    shown = [_update("order #W1", final=True), ("assistant", first),
             ("user", protocol.render_observation(1, {"items": [{"product_id": "P9"}]}))]
    assert protocol.parse_all(oracle.decide(_context(*shown))) == [
        ToolCall(2, "retail.get_product_details", {"product_id": "P9"})]


def test_the_ideal_bound_on_a_hand_checked_example() -> None:
    calls = [
        # heard at 1.0: first token 0.5, written in 0.2 → issued 1.7, back at 2.7
        ideal.PlannedCall(1, (ideal.Input(heard_at=1.0),), text_s=0.2, latency_s=1.0),
        # told by call 1 at 2.7 → issued 3.5, back at 4.3
        ideal.PlannedCall(2, (ideal.Input(producers=(1,)),), text_s=0.3, latency_s=0.8),
        # a write: one value found nowhere (the last word, 5.0), after calls 1 and 2
        # → issued 5.5 + 0.4 = 5.9, back at 6.5
        ideal.PlannedCall(3, (ideal.Input(heard_at=2.0), ideal.Input(value="USA")),
                          text_s=0.4, latency_s=0.6, after=(1, 2)),
        # heard at 0.5 but after the write: written right behind it → 6.0, back at 6.7
        ideal.PlannedCall(4, (ideal.Input(heard_at=0.5),), text_s=0.1, latency_s=0.7,
                          after=(3,)),
        # heard at 4.0, but call 1's result tells it at 2.7 → issued 3.4, back at 3.9
        ideal.PlannedCall(5, (ideal.Input(heard_at=4.0, producers=(1,)),), text_s=0.2,
                          latency_s=0.5),
        # told by call 7, which comes later in the list (back at 1.1) → issued 1.7, 1.8
        ideal.PlannedCall(6, (ideal.Input(producers=(7,)),), text_s=0.1, latency_s=0.1),
        ideal.PlannedCall(7, (ideal.Input(heard_at=0.2),), text_s=0.1, latency_s=0.3),
    ]
    bound = ideal.ideal(calls, last_word_at=5.0, first_token_s=0.5, answer_s=0.6)
    assert bound.issued == pytest.approx({1: 1.7, 2: 3.5, 3: 5.9, 4: 6.0, 5: 3.4, 6: 1.7,
                                          7: 0.8})
    assert bound.returned[4] == pytest.approx(6.7)
    assert bound.answer_start == pytest.approx(7.3)  # all back at 6.7, + 0.6
    assert bound.post_turn_s == pytest.approx(2.3)
    assert bound.used == {1: (), 2: (1,), 3: (), 4: (), 5: (1,), 6: (7,), 7: ()}
    assert bound.late == frozenset()
    edge = profile("edge")  # the answer starts when its first 16 characters are out
    assert ideal.answer_seconds("Done.", edge) == pytest.approx(0.15 + 16 / 480)


def test_calls_waiting_on_each_others_results_take_the_value_at_the_last_word() -> None:
    calls = [ideal.PlannedCall(1, (ideal.Input(producers=(2,), value="x"),), 0.0, 1.0),
             ideal.PlannedCall(2, (ideal.Input(producers=(1,), value="y"),), 0.0, 1.0)]
    bound = ideal.ideal(calls, last_word_at=3.0, first_token_s=0.0, answer_s=0.0)
    assert bound.late == frozenset({"x"}) and bound.used[2] == (1,)
    assert bound.returned == {1: 4.0, 2: 5.0}


# End to end ---------------------------------------------------------------------------------


def _gold(domain: str, task_id: str) -> tuple[Any, list[Any]]:
    from lab.conformance import reference
    from lab.tau2bench.tau2_run import gold_steps, tool_effects

    task = next(t for t in reference.tasks(domain) if str(t.id) == task_id)
    return task, gold_steps(reference.replay(domain, task), tool_effects(domain))


@pytest.fixture(scope="module", params=sorted(E2E_TASKS))
def bench(request: pytest.FixtureRequest, pg_home: Path, ledger_url: str) -> Iterator[Any]:
    """A seeded domain on the tests' Postgres and a real gateway server (child process)."""
    pytest.importorskip("tau2")
    from lab.tau2bench.tau2_run import Options, harness

    domain = str(request.param)
    options = Options(domain=domain, profile="edge", task_ids=E2E_TASKS[domain])
    with harness(make_settings(pg_home, ledger_url), options) as running:
        yield running, options


@pytest.mark.parametrize("corrections", [False, True], ids=["plain", "corrections"])
def test_both_modes_match_tau2_and_speculation_is_faster(
        bench: Any, corrections: bool, tmp_path: Path) -> None:
    from dataclasses import replace

    harness, options = bench
    report = harness.run(replace(options, corrections=corrections, out=tmp_path))
    summary, rows = report["summary"], report["rows"]
    assert summary["failures"] == []
    assert summary["tasks"] == len(rows) == 2
    assert summary["baseline_accuracy"] == summary["speculative_accuracy"] == 1.0
    for row in rows:  # every mode reached τ²'s hash and answered
        for result in row["results"].values():
            assert result["db_hash"] == row["expected_hash"] and result["error"] is None
            assert result["post_turn_s"] > 0 and result["post_turn_end_s"] > \
                result["post_turn_s"]
        base, spec = row["results"]["baseline"], row["results"]["speculative"]
        assert row["speedup"] == pytest.approx(base["post_turn_s"] / spec["post_turn_s"],
                                               abs=1e-3)
        assert spec["post_turn_s"] >= row["ideal_s"] - 1e-6  # the bound is a lower bound
        assert spec["issued_while_speaking"] > 0 and base["issued_while_speaking"] == 0
    speedups = [row["speedup"] for row in rows]
    assert summary["speedup_median"] == pytest.approx(statistics.median(speedups), abs=1e-3)
    assert summary["speedup_median"] > 1.0
    latency = summary["post_turn_latency_ms"]
    assert latency["speculative"]["median"] < latency["baseline"]["median"]
    assert summary["ideal_ratio_median"] >= 1.0 - 1e-6
    _check_files(tmp_path, report)
    if corrections:
        fixed = summary["correction_streams"]
        assert fixed["tasks"] == 2 and fixed["wrong_calls"] > 0
        assert fixed["wrong_calls_committed"] == 0  # no trace of a wrong value
        if options.domain == "retail":  # task 33's wrong address change ran, then undone
            assert fixed["wrong_writes"] > 0
        assert all(row["correction"]["right"] in row["utterance"] for row in rows)


def test_a_local_model_runs_both_modes_on_the_simulated_clock(
        pg_home: Path, ledger_url: str, smollm2_dir: Path) -> None:
    """SmolLM2 was never taught the protocol: its steps are malformed and the turns fail after
    the runtime's error limit. What is shown is the plumbing of ``--model``: the real model
    generates in both modes against the real gateway, each run is graded, nothing is
    committed by a failed turn, and the run goes on."""
    pytest.importorskip("tau2")
    from lab.tau2bench.tau2_run import Options, harness

    options = Options(domain="airline", task_ids=E2E_TASKS["airline"][:1], model=smollm2_dir,
                      max_new_tokens=6)
    with harness(make_settings(pg_home, ledger_url), options) as running:
        report = running.run(options)
    (row,) = report["rows"]
    for result in row["results"].values():
        assert result["error"] is not None and "malformed model steps" in result["error"]
        assert result["calls"]["committed"] == 0 and not result["accurate"]
        assert result["wall_s"] > 0
        # what the model did before failing is kept: more steps than the error limit
        assert result["model_errors"] > AgentConfig().max_errors
        assert result["steps"] >= result["model_errors"]
    summary = report["summary"]
    assert summary["speculative_accurate"] == summary["baseline_accurate"] == 0
    assert all(f"steps, {r['model_errors']} malformed" in line for r, line in
               zip(row["results"].values(), summary["failures"], strict=True))
    assert summary["model"] == str(smollm2_dir)


def test_held_out_tasks_and_tool_listing_come_from_a_data_manifest(tmp_path: Path) -> None:
    from lab.tau2bench.options import options_from

    def options(domain: str, held_out: Path, listing: str | None = None) -> Any:
        return options_from(domain, False, "cloud", None, [], "0.5-1", 0, None,
                            str(tmp_path / "home"), held_out=str(held_out),
                            tool_listing=listing)

    manifest = {"split": {"train": ["tau2-retail-1"],
                          "test": ["tau2-retail-7", "tau2-airline-3", "bfcl-base-2"]},
                "parameters": {"tool_listing": "compact"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    retail = options("retail", tmp_path)
    assert retail.task_ids == ("7",) and retail.tool_listing == "compact"
    airline = options("airline", tmp_path / "manifest.json", "full")
    assert airline.task_ids == ("3",) and airline.tool_listing == "full"
    with pytest.raises(ValueError, match="--tool-listing 'short'"):
        options("retail", tmp_path, "short")
    with pytest.raises(ValueError, match="--threads 0: at least 1"):
        options_from("retail", False, "cloud", None, ["7"], "0.5-1", 0, None, str(tmp_path),
                     threads=0)
    (tmp_path / "manifest.json").write_text(json.dumps({"split": {"test": ["bfcl-base-2"]}}))
    with pytest.raises(ValueError, match="has no retail task"):
        options("retail", tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"split": {"test": ["tau2-retail-7"]}}))
    assert options("retail", tmp_path).tool_listing == "full"  # data made before the option
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a data manifest"):
        options("retail", tmp_path)


def _check_files(out: Path, report: dict[str, Any]) -> None:
    assert json.loads((out / "results.json").read_text())["summary"] == report["summary"]
    table = (out / "results.md").read_text()
    assert "| task | words | calls |" in table and "speedup median" in table
    png = (out / "latency.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


# The command ------------------------------------------------------------------------------


def test_the_command_refuses_bad_options() -> None:
    from typer.testing import CliRunner

    from specgate.cli import app

    runner = CliRunner()
    for args, message in [(["--domain", "telecom"], "--domain must be one of"),
                          (["--domain", "retail", "--profile", "warp"], "unknown latency"),
                          (["--domain", "retail", "--tool-latency", "1-0.5"], "low <= high"),
                          (["--domain", "retail", "--tasks", "0"], "at least 1"),
                          (["--domain", "retail", "--baseline-model", "m"], "needs --model"),
                          (["--domain", "retail", "--model", "/nowhere"], "no model at"),
                          (["--domain", "retail", "--held-out", "/nowhere"],
                           "not a data manifest")]:
        result = runner.invoke(app, ["bench", "tau2", "--out", "x", *args])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output


def test_the_command_runs_a_task_and_writes_its_report(
        pg_home: Path, ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    pytest.importorskip("tau2")
    from typer.testing import CliRunner

    from gateway.config import get_settings
    from specgate.cli import app

    monkeypatch.setenv("SPECGATE_DATABASE_URL", ledger_url)
    monkeypatch.setenv("SPECGATE_HOME", str(pg_home))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["bench", "tau2", "--domain", "airline", "--tasks",
                                          "1", "--profile", "cloud", "--out", str(tmp_path)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "accuracy baseline / speculative" in result.output
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert (summary["domain"], summary["profile"], summary["tasks"]) == ("airline", "cloud", 1)
    assert summary["speculative_accurate"] == summary["baseline_accurate"] == 1
    assert (tmp_path / "latency.png").exists() and (tmp_path / "results.md").exists()

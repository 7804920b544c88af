"""``specgate data make`` for real: a few τ² retail and airline tasks and a few BFCL multi-turn
tasks, through the whole pipeline into a temporary directory; the sample checks, the split,
the command line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent_worker import call_records, protocol
from agent_worker.prompt import system_prompt
from agent_worker.protocol import Malformed, StreamParser, ToolCall
from lab.training import bfcl_source, data, tau2_source
from lab.training.sources import Options, split
from lab.training.streams import Stream

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FILES = ("async/train", "async/test", "sync/train", "sync/test")
OPTIONS = Options(samples_per_task=2, wrong_rate=1.0, correction_rate=0.5)


def _make(out: Path) -> dict[str, Any]:
    return data.make(out, options=OPTIONS, tasks=2, test_fraction=0.5, tokenizer=None)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("data")
    return out, _make(out)


def _samples(out: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in FILES:
        for line in (out / f"{name}.jsonl").read_text().splitlines():
            yield name, json.loads(line)


def test_every_source_gives_samples_in_both_variants(made: tuple[Path, dict[str, Any]]
                                                     ) -> None:
    out, manifest = made
    counted = {name: len((out / f"{name}.jsonl").read_text().splitlines()) for name in FILES}
    assert counted == manifest["counts"]
    sources = {(line["source"], line["variant"]) for _, line in _samples(out)}
    assert sources == {(s, v) for s in ("tau2-retail", "tau2-airline", bfcl_source.SOURCE)
                       for v in ("async", "sync")}
    ids = [line["id"] for _, line in _samples(out)]
    assert len(ids) == len(set(ids))
    # every async sample has its sync variant, on the same side of the split
    pairs = {(name.split("/")[1], line["id"].rsplit("-", 1)[0], line["id"].rsplit("-", 1)[1][1:])
             for name, line in _samples(out)}
    assert len(pairs) * 2 == len(ids)


def test_every_message_is_what_the_runtime_would_show_and_parse(
        made: tuple[Path, dict[str, Any]]) -> None:
    out, _ = made
    for _, line in _samples(out):
        messages = line["messages"]
        assert [m["role"] for m in messages] == \
            ["system"] + ["user", "assistant"] * ((len(messages) - 1) // 2)
        for message in messages:
            assert set(message) <= {"role", "content", "interrupted"}
            if message.get("interrupted"):
                assert message["role"] == "assistant"
            if message["role"] == "assistant":
                parser = StreamParser()
                elements = parser.feed(message["content"])
                assert not any(isinstance(e, Malformed) for e in elements), message
                assert parser.finish() is None, message
        assert isinstance(protocol.parse_all(messages[-1]["content"])[-1], protocol.Answer)


def test_the_system_prompt_lists_the_tools_as_the_gateway_does(
        made: tuple[Path, dict[str, Any]]) -> None:
    out, _ = made
    for _, line in _samples(out):
        if line["source"] == "tau2-retail":
            assert line["messages"][0]["content"] == system_prompt(tau2_source.tools("retail"))
        if line["source"] == bfcl_source.SOURCE:
            names = [c.name for m in line["messages"] if m["role"] == "assistant"
                     for c in protocol.parse_all(m["content"]) if isinstance(c, ToolCall)]
            listed = line["messages"][0]["content"]
            assert all(f"- {n} (?): " in listed for n in names)


def test_the_streams_speculate_and_fix_their_guesses(made: tuple[Path, dict[str, Any]]) -> None:
    out, _ = made
    lines = [line for _, line in _samples(out)]
    speculative = [line for line in lines if line["variant"] == "async"]
    assert any(m.get("interrupted") for line in speculative for m in line["messages"])
    fixes = {w["fix"] for line in speculative for w in line["meta"]["wrong_calls"]}
    assert fixes == {"amend", "remove"}
    assert any(line["meta"].get("correction") for line in speculative)
    for line in lines:
        if line["variant"] == "sync":
            assert line["meta"]["interrupts"] == [] and line["meta"]["wrong_calls"] == []
            assert line["messages"][1]["content"].startswith("<final_query_update>")


def test_the_split_is_by_task_and_disjoint(made: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = made
    train, test = set(manifest["split"]["train"]), set(manifest["split"]["test"])
    assert train and test and not train & test
    for name, line in _samples(out):
        assert line["task"] in (test if name.endswith("test") else train)


def test_same_seed_same_bytes(made: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = made
    _make(tmp_path)
    for name in (*(f"{f}.jsonl" for f in FILES), "manifest.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_a_sample_that_uses_a_value_before_it_is_heard_is_refused() -> None:
    task = tau2_source.load("tau2-retail", 1)[0]
    specs = task.specs(Options(samples_per_task=1, wrong_rate=0.0, correction_rate=0.0))
    assert not isinstance(specs, str)
    line = data.sample(specs[0], task, "async", Options())
    stream = Stream(line["messages"], line["meta"])
    assert data.check(stream, specs[0]) == []
    first = specs[0].task.calls[0]  # τ²'s first gold call, as the model's call 1
    tampered = [dict(m) for m in stream.messages]
    tampered[2]["content"] = protocol.render_tool_call(ToolCall(1, first.name, first.arguments))
    problems = data.check(Stream(tampered, stream.meta), specs[0])
    assert any("before it was heard" in p for p in problems), problems
    no_answer = Stream(stream.messages[:-2], stream.meta)
    assert "the sample does not end with the answer" in data.check(no_answer, specs[0])


def test_tau2_results_are_shown_as_the_gateway_shows_them() -> None:
    staged = tau2_source.observation(True, {"order_id": "#W1"}, "sensitive")
    assert staged.payload == call_records.observation({"status": "staged"}) and staged.ok
    held = tau2_source.observation(True, {"order_id": "#W1"}, "reversible")
    assert held.payload == {"order_id": "#W1"}
    refused = tau2_source.observation(False, "Order not found", "safe")
    assert refused.payload == {"error": {"code": "tool_retry", "message": "Order not found"}}
    assert not refused.ok


def test_split_is_stable_and_holds_out_the_fraction() -> None:
    keys = [f"task-{i}" for i in range(20)]
    train, test = split(keys, 0.25, seed=3)
    assert (train, test) == split(keys, 0.25, seed=3)
    assert len(test) == 5 and set(train) | set(test) == set(keys) and not set(train) & set(test)
    assert split(keys, 0.25, seed=4) != (train, test)
    with pytest.raises(ValueError, match="test fraction"):
        split(keys, 1.0, seed=0)


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        data.make(tmp_path, ["nope"], tokenizer=None)
    with pytest.raises(ValueError, match="wrong-call rate"):
        data.make(tmp_path, options=Options(wrong_rate=2.0), tokenizer=None)
    result = CliRunner().invoke(_app(), ["--out", str(tmp_path), "--tool-latency", "slow"])
    assert result.exit_code == 2 and "tool latency" in result.output
    result = CliRunner().invoke(_app(), ["--out", str(tmp_path), "--tool-listing", "short"])
    assert result.exit_code == 2 and "tool listing must be one of full, compact" in result.output
    assert not (tmp_path / "manifest.json").exists()


def test_the_compact_listing_is_written_and_recorded(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), [
        "--out", str(tmp_path), "--sources", "tau2-airline", "--tasks", "2",
        "--test-fraction", "0.5", "--tool-listing", "compact", "--tokenizer", "none"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["parameters"]["tool_listing"] == "compact"
    assert not manifest["failed_samples"]
    prompt = system_prompt(tau2_source.tools("airline"), listing="compact")
    lines = [json.loads(line) for name in FILES
             for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert lines and all(line["messages"][0]["content"] == prompt for line in lines)
    assert len(prompt) < len(system_prompt(tau2_source.tools("airline"))) / 2


def _app() -> Any:
    import typer

    app = typer.Typer()
    app.command()(data.make_command)
    return app

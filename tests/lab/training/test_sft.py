"""``specgate train`` on SmolLM2-135M, on the CPU: the loss masks match the data format's rules
to the token, a short LoRA run teaches the model the protocol (its exported model, loaded like
any other, writes the training call and stops), a run killed after a checkpoint resumes to the
same step count, and bad data is refused naming the file and line.

Runs are kept tiny (a 4-sample fixture with a short system prompt, sequences cut to 112 tokens,
one torch thread: on a CPU shared with other work, torch's threads wait for each other and one
thread is several times faster)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, TrainerCallback
from typer.testing import CliRunner

from agent_worker.local import weights
from agent_worker.protocol import THINK_INTERRUPTED, ToolCall, parse_all
from lab.training import sft, sft_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = Path(__file__).parents[2] / "fixtures" / "training" / "tiny.jsonl"
SYSTEM = "Act while the user speaks. Tools: shop.get_order (order_id)."
CALL = '<tool_call>{"id":1,"name":"shop.get_order","arguments":{"order_id":"W5512"}}</tool_call>'


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


def learned_runs(encoded: sft_data.Encoded, tokenizer: Any) -> list[str]:
    """The labelled tokens, decoded run by run (a run is one contiguous learned span)."""
    runs: list[list[int]] = [[]]
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label == sft_data.IGNORE:
            if runs[-1]:
                runs.append([])
            continue
        assert label == token  # a label is the token itself (the model shifts it)
        runs[-1].append(token)
    return [tokenizer.decode(run) for run in runs if run]


# Masks -------------------------------------------------------------------------------------------

def test_only_assistant_contents_and_due_end_of_turn_markers_are_learned(tokenizer: Any) -> None:
    think_cut = "<think>the user wants their order, which</think_interrupted>"
    action_cut = CALL  # cut right after a complete action: no closing marker to drop
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "<partial_query_update>where is it</partial_query_update>"},
        {"role": "assistant", "content": think_cut, "interrupted": True},
        {"role": "user", "content": "<partial_query_update>W5512</partial_query_update>"},
        {"role": "assistant", "content": action_cut, "interrupted": True},
        {"role": "user", "content": "<partial_query_update>please</partial_query_update>"},
        {"role": "assistant", "content": "<pause/>"},
        {"role": "user", "content": '<observation id="1">{"status":"shipped"}</observation>'
                                    "<final_query_update>thanks</final_query_update>"},
        {"role": "assistant", "content": "<think>shipped</think><answer>It has shipped.</answer>"},
    ]
    sample = sft_data.Sample("hand-made", tuple(messages))
    fmt = sft_data.chat_format(tokenizer)
    assert fmt.end_of_turn == "<|im_end|>"

    encoded = sft_data.encode(sample, tokenizer, fmt, max_length=4096)

    assert learned_runs(encoded, tokenizer) == [
        "<think>the user wants their order, which",
        action_cut,
        "<pause/><|im_end|>",
        "<think>shipped</think><answer>It has shipped.</answer><|im_end|>",
    ]
    learned = "".join(learned_runs(encoded, tokenizer))
    assert THINK_INTERRUPTED not in learned and "query_update" not in learned
    assert SYSTEM not in learned and "observation" not in learned
    assert not encoded.truncated


def test_truncation_cuts_from_the_right_and_is_counted(tokenizer: Any) -> None:
    whole = sft_data.encode_file(TINY, tokenizer, max_length=4096)
    assert (whole.truncated, whole.dropped, len(whole)) == (0, 0, 4)

    cut = sft_data.encode_file(TINY, tokenizer, max_length=112)
    assert (cut.truncated, cut.dropped, len(cut)) == (4, 0, 4)
    for short, full in zip(cut.items, whole.items, strict=True):
        assert short.input_ids == full.input_ids[:112]  # the system prompt is kept
        assert short.labels == full.labels[:112]

    with pytest.raises(sft_data.TrainingDataError, match="no sample keeps an assistant token "
                                                         "within --max-length 30"):
        sft_data.encode_file(TINY, tokenizer, max_length=30)


# Bad input ---------------------------------------------------------------------------------------

def _line(messages: list[dict[str, Any]]) -> str:
    return json.dumps({"id": "x", "messages": messages})


USER = {"role": "user", "content": "<partial_query_update>hi</partial_query_update>"}
ANSWER = {"role": "assistant", "content": "<answer>hello</answer>"}


@pytest.mark.parametrize(("second_line", "message"), [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ('{"id": "x"}', r"bad\.jsonl:2: expected an object with a \"messages\" list"),
    (_line([USER, USER]), r"bad\.jsonl:2: message 1 has role 'user', expected 'assistant'"),
    (_line([USER]), r"bad\.jsonl:2: no assistant message"),
    (_line([ANSWER, USER]), r"bad\.jsonl:2: message 0 has role 'assistant', expected 'user'"),
    (_line([USER, {"role": "assistant", "content": "<think>a</think_interrupted>"}]),
     r"bad\.jsonl:2: message 1: </think_interrupted> is written by the runtime"),
    (_line([{**USER, "interrupted": True}, ANSWER]),
     r"bad\.jsonl:2: message 0: only assistant messages can be interrupted"),
    (_line([USER, {"role": "assistant", "content": ""}]), r"bad\.jsonl:2: message 1 .* empty"),
])
def test_a_malformed_line_is_refused_naming_its_line(tmp_path: Path, second_line: str,
                                                     message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(_line([USER, ANSWER]) + "\n" + second_line + "\n")
    with pytest.raises(sft_data.TrainingDataError, match=message):
        sft_data.read_samples(path)


def test_missing_or_empty_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(sft_data.TrainingDataError, match="no training data at .*nothing"):
        sft_data.data_files(tmp_path / "nothing", None)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(sft_data.TrainingDataError, match="empty.jsonl holds no samples"):
        sft_data.read_samples(tmp_path / "empty.jsonl")
    (tmp_path / "async").mkdir()
    (tmp_path / "sync").mkdir()
    with pytest.raises(sft_data.TrainingDataError, match="no train.jsonl .*async, sync"):
        sft_data.data_files(tmp_path, None)


def test_the_command_reports_bad_data_without_loading_a_model(tmp_path: Path,
                                                              smollm2_dir: Path) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text(_line([USER, ANSWER]) + "\n" + _line([USER, USER]) + "\n")
    result = CliRunner().invoke(sft.app, ["--data", str(tmp_path), "--model", str(smollm2_dir),
                                          "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "train.jsonl:2: message 1 has role 'user'" in result.output
    assert not (tmp_path / "run").exists()


# Training ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """One short LoRA run through the command: the fixture as train.jsonl, its first sample
    as the test.jsonl beside it (the default eval set)."""
    root = tmp_path_factory.mktemp("sft")
    data = root / "data"
    data.mkdir()
    lines = TINY.read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    (data / "test.jsonl").write_text(lines[0] + "\n")
    result = CliRunner().invoke(sft.app, [
        "--data", str(data), "--model", str(smollm2_dir), "--out", str(root / "run"),
        "--max-steps", "12", "--lr", "5e-3", "--batch-size", "1", "--grad-accum", "1",
        "--max-length", "112", "--log-steps", "2", "--threads", "1", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "step 2/12: loss" in result.output  # not a terminal: a line per logged loss
    return root / "run"


def test_a_short_lora_run_lowers_the_loss_and_writes_its_report(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    losses = [entry["loss"] for entry in metrics["train_loss"]]
    assert metrics["steps"] == 12 and metrics["train_loss"][0]["step"] == 1
    assert losses[-1] < 0.5 * losses[0]
    assert [entry["step"] for entry in metrics["eval_loss"]] == [12]
    assert metrics["data"]["train"]["truncated"] == 4 and metrics["data"]["eval"]["samples"] == 1
    assert metrics["speed"]["steps"] == 12 and metrics["speed"]["tokens"] > 0
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (trained / "checkpoint-12").is_dir()


def test_the_exported_model_writes_the_trained_call_and_stops(trained: Path) -> None:
    import torch

    model, tokenizer = weights.load(trained / "final", device="cpu")
    messages = json.loads(TINY.read_text().splitlines()[0])["messages"][:2]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=48, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:].tolist()

    assert new[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # it ends its turn
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert parse_all(text) == [ToolCall(1, "shop.get_order", {"order_id": "W5512"})]


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise Killed


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path,
                                                       smollm2_dir: Path) -> None:
    data = tmp_path / "one.jsonl"
    data.write_text(TINY.read_text().splitlines()[0] + "\n")
    config = sft.SftConfig(data=data, model=smollm2_dir, out=tmp_path / "run", max_steps=3,
                           lr=1e-3, grad_accum=1, max_length=96, log_steps=1, save_steps=2,
                           threads=1)
    with pytest.raises(Killed):
        sft.run(config, callbacks=[KillAfterSave(2)])
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert not (tmp_path / "run" / "final").exists()
    with pytest.raises(sft.TrainingError, match="already holds checkpoints: pass --resume"):
        sft.run(config)

    result = sft.run(replace(config, resume=True))

    assert result.metrics["steps"] == 3 and result.metrics["speed"]["steps"] == 1
    assert [e["step"] for e in result.metrics["train_loss"]] == [1, 2, 3]
    assert (tmp_path / "run" / "checkpoint-3").is_dir()
    assert weights.source(result.final).path == tmp_path / "run" / "final"


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path, smollm2_dir: Path) -> None:
    config = sft.SftConfig(data=TINY, model=smollm2_dir, out=tmp_path / "run", resume=True)
    with pytest.raises(sft.TrainingError, match="--resume: no checkpoint in"):
        sft.run(config)


def test_full_fine_tuning_trains_and_exports_the_weights_themselves(tmp_path: Path,
                                                                    smollm2_dir: Path) -> None:
    import torch

    config = sft.SftConfig(data=TINY, model=smollm2_dir, out=tmp_path / "run", lora=False,
                           max_steps=1, lr=1e-4, warmup=0, grad_accum=1, max_length=64,
                           threads=1)
    result = sft.run(config)

    base, _ = weights.load(smollm2_dir, device="cpu")
    tuned, _ = weights.load(result.final, device="cpu")
    tuned_params = dict(tuned.named_parameters())
    changed = {name for name, param in base.named_parameters()
               if not torch.equal(param, tuned_params[name])}
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight",
            "model.norm.weight"} <= changed
    assert not any("lora" in name for name in tuned_params)


def test_a_time_budget_ends_the_run_with_a_checkpoint_and_an_export(tmp_path: Path,
                                                                    smollm2_dir: Path) -> None:
    config = sft.SftConfig(data=TINY, model=smollm2_dir, out=tmp_path / "run", max_steps=50,
                           lr=1e-4, grad_accum=1, max_length=64, threads=1, bf16=False,
                           time_budget_min=1e-6)
    result = sft.run(config)

    assert result.metrics["steps"] == 1 and result.metrics["stopped_by_time_budget"]
    assert result.metrics["bf16"] is False
    assert (tmp_path / "run" / "checkpoint-1").is_dir()
    assert weights.source(result.final).path == tmp_path / "run" / "final"


def test_bf16_on_the_cpu_is_what_was_asked() -> None:
    assert sft.use_bf16(False, "cpu") is False and sft.use_bf16(True, "cpu") is True

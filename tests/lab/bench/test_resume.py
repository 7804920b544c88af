"""``specgate bench resume`` end to end on SmolLM2-135M at one short length: the figures are
only printed (no timing is asserted), the token counts and the outputs are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from lab.bench import resume as resume_bench


def test_resume_prefills_the_injection_only_and_writes_the_same_tokens(tmp_path: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tmp_path / "resume.json"
    console = Console(record=True, width=120)
    options = resume_bench.options_from(None, "cpu", "200", 1, str(out), threads=1)
    [result] = resume_bench.run(options, console)
    summary = result.summary()
    assert summary["same_output"] is True
    assert summary["scratch_prefilled"] == summary["context_tokens"] >= 200
    assert 0 < summary["resume_prefilled"] * 5 < summary["context_tokens"]
    assert result.resume[0].reused + result.resume[0].prefilled == summary["context_tokens"]
    written = json.loads(out.read_text())
    assert written["lengths"][0]["context_tokens"] == summary["context_tokens"]
    assert "resume p50 ms" in console.export_text()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="lengths"):
        resume_bench.parse_lengths("a lot")
    with pytest.raises(ValueError, match="at least 100"):
        resume_bench.parse_lengths("1000,50")
    with pytest.raises(ValueError, match="repeats"):
        resume_bench.options_from(None, None, "1000", 0, None)
    with pytest.raises(ValueError, match="no model at"):
        resume_bench.options_from("/nowhere/model", None, "1000", 1, None)

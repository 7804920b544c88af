"""What a ``specgate bench tau2`` run measured: a ``ModeResult`` per task and mode (baseline
or speculative), gathered in a ``TaskRow`` per task. ``tau2_run`` fills them and
``tau2_report`` sums them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModeResult:
    mode: str
    accurate: bool = False
    db_hash: str | None = None
    post_turn_s: float | None = None  # last word → answer start
    post_turn_end_s: float | None = None  # last word → answer end
    answered_at: float | None = None  # simulated seconds from the first word
    steps: int = 0
    interrupts: int = 0
    model_errors: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # issued, committed, cancelled, failed
    actions: dict[str, int] = field(default_factory=dict)  # the model's: pause, tool_call, …
    issued_while_speaking: int = 0
    wrong_calls: int = 0  # carrying the corrected (wrong) value
    wrong_writes: int = 0  # of them, writes (held or staged, then undone)
    wrong_committed: int = 0
    wall_s: float = 0.0
    error: str | None = None


@dataclass
class TaskRow:
    task_id: str
    words: int
    speech_s: float
    gold_calls: int
    writes: int
    expected_hash: str
    ideal_s: float
    results: dict[str, ModeResult]
    utterance: str = ""
    correction: dict[str, Any] | None = None
    correction_note: str = ""

    @property
    def speedup(self) -> float | None:
        base, spec = self.results["baseline"], self.results["speculative"]
        if base.post_turn_s is None or not spec.post_turn_s:
            return None
        return base.post_turn_s / spec.post_turn_s

    @property
    def ideal_ratio(self) -> float | None:
        spec = self.results["speculative"].post_turn_s
        return None if spec is None or self.ideal_s < 1e-3 else spec / self.ideal_s

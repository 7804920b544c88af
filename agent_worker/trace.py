"""The structured trace of a session: every event with its clock time, as JSON lines.

Kinds (each line also has ``t``, seconds on the session's clock, and ``kind``):
session · user_chunk (text, final, spoken_at) · inject (text) · generation_start /
generation_end (text kept) · interrupt (dropped, in_tag) · think · action (action, …) ·
model_error (message) · deferred · call_issued / call_posted / call_settled / call_removed /
call_cancelled · observation (payload) · gateway_error · commit_point (frozen ids) ·
commit_start / commit_done / commit_failed · turn_opened / turn_cancelled · answer_start ·
answer · turn_end (answer, last_word_at, answer_started_at, post_turn_latency).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from agent_worker.clock import Clock


@dataclass
class Trace:
    clock: Clock
    sink: IO[str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, **data: Any) -> dict[str, Any]:
        record = {"t": round(self.clock.now(), 6), "kind": kind, **data}
        self.records.append(record)
        if self.sink is not None:
            self.sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            self.sink.flush()
        return record

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """Records of one kind whose fields equal ``match``."""
        return [r for r in self.records
                if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]

    def first(self, kind: str, **match: Any) -> dict[str, Any] | None:
        found = self.of(kind, **match)
        return found[0] if found else None

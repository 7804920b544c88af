"""τ²'s gold actions as the benchmark's builders take them: ``GoldStep`` (one action of τ²'s
reference replay, with the gateway's effect class of its tool) and ``gold_values`` (the literal
values its arguments carry). Both the streaming replay (``tau2_stream``) and the correction
streams (``tau2_corrections``) read them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_worker.backends.oracle import literals


@dataclass(frozen=True)
class GoldStep:
    """One gold action as the builder needs it (from τ²'s reference replay)."""

    name: str
    arguments: dict[str, Any]
    ok: bool
    output: Any
    effect: str  # the gateway's effect class of ``<domain>.<name>``

    @property
    def shows_result(self) -> bool:
        """The agent sees its result before commit (a read, or a held reversible write)."""
        return self.ok and self.effect in ("safe", "reversible")

    @property
    def shown(self) -> str:
        """The result as the agent is shown it (JSON), or nothing for a failed step."""
        return json.dumps(self.output, ensure_ascii=False, separators=(",", ":")) \
            if self.ok else ""


def gold_values(steps: Sequence[GoldStep]) -> list[str]:
    return [v for step in steps for v in literals(step.arguments)]

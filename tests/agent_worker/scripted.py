"""A scripted model: the deterministic fake at the model edge.

The script is a list of rules. A generation plays the first rule not yet played whose trigger
appears in what the model was just shown (the injections since it last wrote), piece by piece
at the given delays on the session's clock; with no rule matching it writes ``<pause/>``. A
rule counts as played once its first piece is out, so a generation interrupted before that
leaves it for the next one. Every context is recorded, so a test can see what the model saw.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_worker.clock import Clock
from agent_worker.model import Context


@dataclass
class Rule:
    when: str
    pieces: list[tuple[float, str]]
    played: bool = False


def on(when: str, *pieces: str, every: float = 0.1, first: float = 0.1) -> Rule:
    """When ``when`` was just shown: write the pieces, the first after ``first`` s, then one
    every ``every`` s."""
    return Rule(when, [(first if i == 0 else every, p) for i, p in enumerate(pieces)])


def call(call_id: int, tool: str, depends_on: Sequence[int] = (), **arguments: Any) -> str:
    body: dict[str, Any] = {"id": call_id, "name": f"demo.{tool}", "arguments": arguments}
    if depends_on:
        body["depends_on"] = list(depends_on)
    return f"<tool_call>{json.dumps(body)}</tool_call>"


@dataclass
class ScriptedModel:
    clock: Clock
    rules: list[Rule]
    name: str = "scripted"
    contexts: list[Context] = field(default_factory=list)
    closed: int = 0  # generations stopped before their end

    async def stream(self, context: Context) -> AsyncGenerator[str, None]:
        self.contexts.append(context)
        fresh = context.segments[-1][1] if context.segments else ""
        rule = next((r for r in self.rules if not r.played and r.when in fresh), None)
        pieces = rule.pieces if rule else [(0.1, "<pause/>")]
        finished = False
        try:
            for delay, text in pieces:
                await self.clock.sleep(delay)
                if rule is not None:
                    rule.played = True
                yield text
            finished = True
        finally:
            if not finished:
                self.closed += 1

    def shown(self, generation: int = -1) -> str:
        """Everything the model had been shown at the start of a generation."""
        return "".join(text for _, text in self.contexts[generation].segments)

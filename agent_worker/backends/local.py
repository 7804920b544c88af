"""A causal LM run locally on transformers + torch (GPU when present, CPU otherwise), streaming
token by token, with its KV cache kept across steps (docs/architecture.md#agent-worker).

Each step renders the context with the tokenizer's chat template (ChatML for SmolLM2), lets
``KVState`` (``agent_worker.local.generate``) reuse what the cache still holds and prefill only
the rest, then generates greedily (or sampling at ``temperature``) until the end-of-turn token,
``max_new_tokens`` or the model's last position. So after an interruption only the injected
text and the template's few tokens are prefilled, not the whole transcript.

Interruptible: every forward pass runs on one worker thread of the backend, awaited from the
loop, and each decoded delta is yielded as soon as its token is picked, so the runtime's
cancellation stops generation between tokens. A forward pass already running when the step is
cancelled finishes on its thread and records its token in the cache's books; the next step's
work queues behind it on the same thread, so the cache is never touched by two at once.

Clock: with a ``VirtualClock`` each forward pass is real work during which simulated time
stands still (``clock.busy()``), then its measured wall time is charged to the clock
(``clock.sleep``): a replay on simulated time sees the model's real cost while speech and tool
latency stay declared. With a wall clock nothing is added — the time has really passed.

``steps`` keeps one ``StepStats`` per call to ``stream``: tokens reused from the cache,
prefilled and generated, the generated ids, how it stopped and the time to its first token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from jinja2 import TemplateError

from agent_worker.clock import Clock, VirtualClock
from agent_worker.errors import BackendError
from agent_worker.local import weights
from agent_worker.local.generate import Detokenizer, KVState
from agent_worker.model import Context

T = TypeVar("T")
Stop = Literal["running", "eos", "max_new_tokens", "context", "closed", "superseded",
               "failed"]


@dataclass
class StepStats:
    """One step (one ``stream`` call). Times are wall seconds from the call. The first three
    are filled once the prefill has run (by the worker thread, even if the step was cancelled
    meanwhile; ``idle()`` waits for that)."""

    reused: int = 0  # tokens whose keys/values came from the cache
    prefilled: int = 0  # tokens run before the first new token
    prefill_s: float = 0.0  # matching the cache and the prefill's forward pass
    generated: int = 0  # tokens picked (the end-of-turn token aside)
    tokens: list[int] = field(default_factory=list)  # their ids
    ttft_s: float | None = None  # to the first picked token
    stop: Stop = "running"


class LocalBackend:
    name = "local"

    def __init__(self, model: Any, tokenizer: Any, *, clock: Clock | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
                 max_positions: int | None = None) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        self.model, self.tokenizer = model, tokenizer
        self.clock = clock
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.state = KVState(model, tokenizer)
        if max_positions is not None:  # a window smaller than the model's, e.g. for memory
            if not 1 < max_positions <= self.state.max_positions:
                raise ValueError(f"max_positions must be in 2..{self.state.max_positions}, "
                                 f"got {max_positions!r}")
            self.state.max_positions = max_positions
        self.steps: list[StepStats] = []
        self.stop_ids = _stop_ids(model, tokenizer)
        self._rng = torch.Generator().manual_seed(seed)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None,
             **options: Any) -> LocalBackend:
        """A backend on the model at ``path`` (a directory or a .gguf; never a hub)."""
        model, tokenizer = weights.load(path, device=device)
        return cls(model, tokenizer, **options)

    @property
    def last(self) -> StepStats:
        if not self.steps:
            raise LookupError("no step has run yet")
        return self.steps[-1]

    def render(self, context: Context) -> str:
        """The context as the model reads it: the chat template, ending where it writes."""
        try:
            return str(self.tokenizer.apply_chat_template(
                context.messages(), add_generation_prompt=True, tokenize=False))
        except (TemplateError, ValueError) as error:  # no template, or it refuses the roles
            raise BackendError(f"cannot render the context with the model's chat template: "
                               f"{error}") from error

    def reset(self) -> None:
        """Drop the cache (on the worker thread, after any forward pass still running;
        blocks until done)."""
        self._worker.submit(self.state.reset).result()

    def idle(self) -> None:
        """Block until the worker thread has finished what was queued (a forward pass of a
        cancelled step runs to its end)."""
        self._worker.submit(lambda: None).result()

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    async def stream(self, context: Context) -> AsyncGenerator[str, None]:
        started = time.perf_counter()
        stats = StepStats()
        self.steps.append(stats)
        try:
            logits, generation = await self._run(self._prefill, self.render(context), stats)
            detokenizer = Detokenizer(self.tokenizer)
            while True:
                token = self._pick(logits)
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - started
                if token in self.stop_ids:
                    stats.stop = "eos"
                    return
                stats.generated += 1
                stats.tokens.append(token)
                delta = detokenizer.push(token)
                if delta:
                    yield delta
                limit = self._limit(stats)
                if limit is not None:
                    stats.stop = limit
                    return
                fed = await self._run(self.state.feed, generation, token, delta)
                if fed is None:
                    stats.stop = "superseded"
                    return
                logits = fed
        except Exception:
            stats.stop = "failed"
            raise
        finally:
            if stats.stop == "running":  # closed or cancelled by the runtime
                stats.stop = "closed"

    def _limit(self, stats: StepStats) -> Stop | None:
        """Why the step must end before feeding its last token back, if it must."""
        if stats.generated >= self.max_new_tokens:
            return "max_new_tokens"
        if self.state.room() <= 0:
            return "context"
        return None

    def _prefill(self, text: str, stats: StepStats) -> tuple[torch.Tensor, int]:
        """On the worker thread: match the cache, run the rest. Fills ``stats`` here, so a
        step cancelled during its prefill is still counted once the prefill has run."""
        began = time.perf_counter()
        plan = self.state.plan(text)
        logits = self.state.prefill(plan)
        stats.reused, stats.prefilled = plan.reuse, len(plan.rest)
        stats.prefill_s = time.perf_counter() - began
        return logits, self.state.generation

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        """``work`` on the worker thread; on a simulated clock, time stands still meanwhile and
        the measured time is charged afterwards."""
        loop = asyncio.get_running_loop()
        if not isinstance(self.clock, VirtualClock):
            return await loop.run_in_executor(self._worker, work, *args)
        began = time.perf_counter()
        async with self.clock.busy():
            result = await loop.run_in_executor(self._worker, work, *args)
        await self.clock.sleep(time.perf_counter() - began)
        return result

    def _pick(self, logits: torch.Tensor) -> int:
        if self.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.cpu() / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._rng))


def _stop_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-turn ids: the tokenizer's eos and the generation config's (an id or a list)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id,
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer names no end-of-sequence token: a step could not end")
    return frozenset(ids)

"""The local transformers backend on SmolLM2-135M (CPU): streaming, the KV cache kept across an
interruption (asserted on token counts and on the token ids a cache-less run produces), and the
backend inside the real runtime against a real gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_worker import inputs
from agent_worker.clock import VirtualClock
from agent_worker.errors import BackendError, TurnFailed
from agent_worker.model import Context
from agent_worker.prompt import PROTOCOL
from agent_worker.runtime import AgentConfig
from tests.agent_worker.conftest import World

SYSTEM = "You are a helpful assistant. Answer briefly."
# A system prompt as in a session (the protocol's first lines, ~170 tokens, short for the test's
# sake): the injection is small beside it.
STORY = Context("\n".join(PROTOCOL.splitlines()[:8]),
                (("user", "Tell me a short story about a cat."),))
INJECTED = "<partial_query_update>Make it about a dog instead.</partial_query_update>"


@pytest.fixture(scope="session")
def smollm2(smollm2_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, loaded once; each test builds its own
    backend (its own cache) on them."""
    from agent_worker.local import weights

    return weights.load(smollm2_dir, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module: the test machines' few cores are shared, and
    torch's threads spin-waiting on an oversubscribed CPU make a token several times slower."""
    from agent_worker.local import weights

    with weights.torch_threads(1):
        yield


def backend(smollm2: tuple[Any, Any], **options: Any) -> Any:
    from agent_worker.backends.local import LocalBackend

    return LocalBackend(*smollm2, **{"max_new_tokens": 8, **options})


def ids(b: Any, context: Context) -> list[int]:
    """The token ids of a context's whole rendering, tokenized at once (what a fresh run
    prefills)."""
    return list(b.tokenizer(b.render(context), add_special_tokens=False)["input_ids"])


async def take(stream: AsyncGenerator[str, None], n: int | None = None) -> list[str]:
    """The stream's deltas; with ``n``, closed after ``n`` of them, as the runtime does when
    it interrupts a step."""
    deltas: list[str] = []
    try:
        async for delta in stream:
            deltas.append(delta)
            if n is not None and len(deltas) >= n:
                break
    finally:
        await stream.aclose()
    return deltas


def consistent(b: Any) -> None:
    """The cache holds exactly the tokens the backend's books say."""
    b.idle()
    assert b.state.cache.get_seq_length() == len(b.state.ids)


def continued(first: Context, written: str, injected: str = INJECTED) -> Context:
    return Context(first.system, (*first.segments, ("assistant", written), ("user", injected)))


# Streaming ------------------------------------------------------------------------------------

def test_streams_deltas_one_by_one_and_stops_at_the_end_of_turn(smollm2: Any) -> None:
    b = backend(smollm2, max_new_tokens=48)
    context = Context(SYSTEM, (("user", "What is the capital of France?"),))
    deltas = asyncio.run(take(b.stream(context)))
    step = b.last
    assert step.stop == "eos" and step.generated < 48
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == b.tokenizer.decode(step.tokens)
    assert (step.reused, step.prefilled) == (0, len(ids(b, context)))
    consistent(b)


def test_deltas_are_whole_characters_across_multibyte_tokens(smollm2: Any) -> None:
    from agent_worker.local.generate import Detokenizer

    tokenizer = smollm2[1]
    text = "Café naïve — 🙂 日本語, ok"
    detokenizer = Detokenizer(tokenizer)
    deltas = [detokenizer.push(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert "".join(deltas) == text
    assert "" in deltas  # some token carried only part of a character and waited
    assert not any("\ufffd" in d for d in deltas)


# Resuming after an interruption ---------------------------------------------------------------

def test_an_interrupted_step_resumes_prefilling_only_the_new_suffix(smollm2: Any) -> None:
    b = backend(smollm2)
    kept = "".join(asyncio.run(take(b.stream(STORY), 6)))
    assert b.last.stop == "closed" and b.last.generated == 6
    cached = list(b.state.ids)  # the prompt and the 5 tokens run before the close
    assert len(cached) == len(ids(b, STORY)) + 5
    second = continued(STORY, kept + "</think_interrupted>")
    resumed = asyncio.run(take(b.stream(second)))
    fresh = ids(b, second)
    step = b.last
    assert step.reused == len(cached)  # the whole cache still holds
    assert fresh[:step.reused] == cached
    assert step.prefilled == len(fresh) - len(cached)
    # The new suffix: the closing tag, the template's turn change and the injected words, plus
    # the 6th written token, streamed but not yet run when the step was closed.
    suffix = b.render(second)[len(b.render(STORY)) + len(kept):]
    assert step.prefilled <= len(b.tokenizer(suffix, add_special_tokens=False)["input_ids"]) + 1
    assert step.prefilled * 5 < len(fresh)
    consistent(b)
    # A backend without any cache writes exactly the same tokens.
    c = backend(smollm2)
    assert asyncio.run(take(c.stream(second))) == resumed
    assert c.last.tokens == step.tokens and c.last.reused == 0


def test_a_dropped_half_written_action_crops_the_cache(smollm2: Any) -> None:
    b = backend(smollm2)
    written = "".join(asyncio.run(take(b.stream(STORY))))
    cached = list(b.state.ids)
    # The runtime keeps less than was written (it drops a half-written action), cut here
    # inside a written token on purpose.
    kept = written[:len(written) // 2 + 1]
    second = continued(STORY, kept, "<error>each step ends with an action</error>")
    asyncio.run(take(b.stream(second)))
    fresh = ids(b, second)
    step = b.last
    assert len(ids(b, STORY)) <= step.reused < len(cached)
    assert step.reused + step.prefilled == len(fresh)
    assert b.state.ids[:len(fresh)] == fresh  # the cache now holds exactly the fresh ids
    consistent(b)
    c = backend(smollm2)
    asyncio.run(take(c.stream(second)))
    assert c.last.tokens == step.tokens


def test_a_context_beyond_the_models_positions_fails_clearly(smollm2: Any) -> None:
    b = backend(smollm2, max_positions=24)
    with pytest.raises(BackendError, match="at most 24 positions"):
        asyncio.run(take(b.stream(STORY)))
    assert b.last.stop == "failed"
    with pytest.raises(ValueError, match="max_positions"):
        backend(smollm2, max_positions=10**9)


def test_sampling_at_a_temperature_is_reproducible_by_seed(smollm2: Any) -> None:
    context = Context(SYSTEM, STORY.segments)
    first = backend(smollm2, temperature=0.9, seed=7)
    second = backend(smollm2, temperature=0.9, seed=7)
    assert asyncio.run(take(first.stream(context))) == asyncio.run(take(second.stream(context)))
    assert first.last.tokens == second.last.tokens
    with pytest.raises(ValueError, match="temperature"):
        backend(smollm2, temperature=-1)


def test_a_virtual_clock_is_charged_the_measured_model_time(smollm2: Any) -> None:
    clock = VirtualClock()

    async def play() -> None:
        async with clock.running():
            await take(b.stream(STORY), 3)

    b = backend(smollm2, clock=clock)
    asyncio.run(play())
    assert b.last.prefill_s > 0
    assert clock.now() >= b.last.prefill_s


# In the runtime -------------------------------------------------------------------------------

def test_the_runtime_runs_a_turn_on_the_local_model(world: World, smollm2: Any) -> None:
    from agent_worker.backends.local import LocalBackend

    class Recording(LocalBackend):
        """The real backend, also keeping each context it was given."""

        def __init__(self, *args: Any, **options: Any) -> None:
            super().__init__(*args, **options)
            self.contexts: list[Context] = []

        def stream(self, context: Context) -> AsyncGenerator[str, None]:
            self.contexts.append(context)
            return super().stream(context)

    run = world.play(
        lambda clock: Recording(*smollm2, clock=clock, max_new_tokens=24),
        lambda clock: inputs.timed_chunks(clock, [(0.3, "This is Ann,"), (0.6, "one kettle."),
                                                  (0.9, "thanks.")]),
        config=AgentConfig(max_errors=1))
    # SmolLM2 knows nothing of the protocol: an answer or a clean failure after its errors.
    assert run.error is None or isinstance(run.error, TurnFailed), f"{run.error!r}\n{run.dump()}"
    model: Recording = run.backend
    model.idle()  # a forward pass of the last, cancelled step may still be finishing
    steps = model.steps
    assert len(steps) == len(model.contexts) == len(run.trace.of("generation_start")) > 1
    if run.result is not None:
        assert run.result.steps == len(steps)
    else:
        assert "malformed model steps in a row" in str(run.error)
        assert len(run.trace.of("model_error")) >= 2  # max_errors + 1 in a row
    system = model.tokenizer.apply_chat_template(
        [{"role": "system", "content": model.contexts[0].system}], tokenize=False)
    system_tokens = len(model.tokenizer(system, add_special_tokens=False)["input_ids"])
    for step, context in zip(steps, model.contexts, strict=True):
        assert step.reused + step.prefilled == len(ids(model, context))
        assert step.stop in ("eos", "max_new_tokens", "closed")
    for step in steps[1:]:  # the system prompt and what followed stay cached
        assert step.reused >= system_tokens and step.prefilled * 10 < step.reused
    assert sum(s.stop == "closed" for s in steps) >= len(run.trace.of("interrupt"))
    consistent(model)
    model.close()


def test_the_agent_command_refuses_a_missing_local_model() -> None:
    from typer.testing import CliRunner

    from agent_worker.cli import app

    result = CliRunner().invoke(app, ["--key", "k", "--backend", "local", "--model-path",
                                      "/nowhere/model", "--text", "hi"])
    assert result.exit_code != 0 and "no model at" in result.output

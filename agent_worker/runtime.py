"""The agent runtime: asynchronous I/O and speculative tool calling
(docs/architecture.md#agent-worker).

One event queue carries everything that happens: user chunks (from the input source),
observations and cancellations (from the call graph), and the model's own output (deltas from
the generation task). The loop takes one event at a time:

- a model delta is parsed; each complete action is carried out at once (a call is issued while
  the model goes on writing);
- any other event, while the model generates, **interrupts** it: the generation task is
  cancelled (its stream closed), what the model finished is kept — a think cut short is closed
  with ``</think_interrupted>``, a half-written action is dropped — the event is injected, and
  a new step starts on the longer transcript; while the model is idle, the event is injected
  and starts a step. An event that arrives while the model is inside a ``<tool_call>`` or
  ``<remove>`` waits until that action is complete (``AgentConfig.finish_actions``): cutting it
  would throw away a call the model is a few tokens from finishing and pay a whole new step
  (first-token latency included) to write it again;
- a malformed step (bad JSON, unknown tag or tool, non-growing new id, a stream that stops
  inside a tag, an answer before the user finished) is answered with ``<error>`` and a new
  step; ``max_errors`` in a row fail the turn.

**Commit point**: once the final update has been injected, the first action that is a call with
a new id, a pause or an answer. The calls issued until then commit as one gateway turn (with
the calls the model kept); calls issued after it go into a next turn, committed at the answer.
An answer is given to the user only once its commit has succeeded; a kept call that failed at
commit is shown to the model, which answers again. While the answer streams, events do not
interrupt it.

The synchronous baseline (``mode="sync"``) is the same runtime given the whole utterance at
once as one final update: the model then reasons and calls tools one step after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from contextlib import aclosing
from typing import Any

from agent_worker import protocol
from agent_worker.calls import CallGraph
from agent_worker.clock import Clock
from agent_worker.errors import BackendError, TurnFailed
from agent_worker.events import (
    Event,
    External,
    ModelDelta,
    ModelDone,
    ModelFailed,
    UserChunk,
    render,
)
from agent_worker.gateway_client import GatewayClient
from agent_worker.model import Backend, Context, Transcript
from agent_worker.prompt import system_prompt
from agent_worker.protocol import (
    Answer,
    AnswerStart,
    CallBook,
    Element,
    Malformed,
    Pause,
    Remove,
    StreamParser,
    Think,
    ToolCall,
)
from agent_worker.trace import Trace
from agent_worker.turn import AgentConfig, CommitDone, Generation, TurnResult, TurnState

ACTION_TAGS = frozenset({"tool_call", "remove"})

__all__ = ["Agent", "AgentConfig", "TurnResult"]


class Agent:
    def __init__(self, backend: Backend, gateway: GatewayClient, clock: Clock,
                 trace: Trace | None = None, config: AgentConfig | None = None) -> None:
        self.backend, self.gateway, self.clock = backend, gateway, clock
        self.trace = trace or Trace(clock)
        self.config = config or AgentConfig()
        self.queue: asyncio.Queue[Event | CommitDone] = asyncio.Queue()
        self.graph = CallGraph(gateway, clock, self.trace, self.queue.put_nowait,
                               self.config.tool_latency)
        self.transcript = Transcript()
        self.tools: tuple[dict[str, Any], ...] = ()
        self.book = CallBook(tools=())
        self.system = ""
        self._generations = 0

    async def start(self, metadata: dict[str, Any] | None = None) -> str:
        """Read the tools and open a gateway session; returns its id."""
        self.tools = tuple(await self.gateway.tools())
        self.book = CallBook(tools={t["name"] for t in self.tools})
        self.system = system_prompt(self.tools, self.config.instructions,
                                    self.config.tool_listing)
        return await self.graph.open(metadata)

    async def close(self) -> None:
        await self.graph.close()

    async def turn(self, source: AsyncIterable[UserChunk]) -> TurnResult:
        """One user utterance, to the committed answer."""
        state = TurnState()
        feeder = asyncio.create_task(self._feed(source, state), name="input")
        try:
            while state.answer is None:
                self._check_idle(state)
                await self._handle(await self.queue.get(), state)
                if self.queue.empty():
                    self._maybe_step(state)
        except BaseException as error:
            await self._stop(state, keep_all=True)
            await self.graph.close(reason=f"the agent's turn failed: {error!r}")
            raise
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        assert state.answer_started_at is not None
        result = TurnResult(state.answer, state.last_word_at, state.answer_started_at,
                            self.clock.now(), state.steps, state.errors, state.interrupts)
        self.trace.add("turn_end", answer=state.answer, last_word_at=state.last_word_at,
                       answer_started_at=state.answer_started_at,
                       post_turn_latency=result.post_turn_latency)
        return result

    async def _feed(self, source: AsyncIterable[UserChunk], state: TurnState) -> None:
        final = False
        async for chunk in source:
            self.queue.put_nowait(chunk)
            final = chunk.final
            if final:
                break
        if not final:  # a source that ends without saying so: the utterance is over
            self.queue.put_nowait(UserChunk("", final=True, spoken_at=self.clock.now()))

    # Events -------------------------------------------------------------------------------

    async def _handle(self, event: Event | CommitDone, state: TurnState) -> None:
        if isinstance(event, CommitDone):
            answering = state.generation is not None and state.generation.answering
            if not answering:  # else the answer looks at them once it is complete
                for reported in state.reported:
                    await self._handle(reported, state)
                state.reported.clear()
            return
        if isinstance(event, ModelDelta | ModelDone | ModelFailed):
            current = state.generation
            if current is None or current.number != event.generation:
                return  # from a generation already stopped
            if isinstance(event, ModelDelta):
                await self._on_delta(event.text, state)
            elif isinstance(event, ModelDone):
                await self._on_done(state)
            else:
                raise BackendError(f"model backend {self.backend.name!r} failed: {event.error}")
            await self._release_held_back(state)
            return
        external: External | None = event
        if isinstance(event, UserChunk):
            await self.graph.heard(event.text, event.final)
            external = self._user_chunk(event, state)
        if external is None:
            return
        if state.generation is not None and state.generation.answering:
            state.deferred.append(external)
            self.trace.add("deferred", text=render(external))
            return
        if state.generation is not None and self._writing_action(state.generation):
            state.held_back.append(external)
            self.trace.add("held_back", text=render(external))
            return
        if state.generation is not None:
            await self._interrupt(state)
        self._inject(render(external), state)

    def _writing_action(self, generation: Generation) -> bool:
        return self.config.finish_actions and generation.parser.incomplete in ACTION_TAGS

    async def _release_held_back(self, state: TurnState) -> None:
        """Events held back while the model wrote an action, once it is written (or the step
        ended): the model is interrupted then, and sees them in arrival order."""
        generation = state.generation
        if not state.held_back or (generation is not None and self._writing_action(generation)):
            return
        events, state.held_back = state.held_back, []
        if generation is not None and generation.answering:
            state.deferred.extend(events)
            return
        if generation is not None:
            await self._interrupt(state)
        for event in events:
            self._inject(render(event), state)

    def _user_chunk(self, chunk: UserChunk, state: TurnState) -> UserChunk | None:
        self.trace.add("user_chunk", text=chunk.text, final=chunk.final,
                       spoken_at=chunk.spoken_at)
        if chunk.final:
            state.final_heard = True
            state.last_word_at = chunk.spoken_at if chunk.spoken_at is not None \
                else self.clock.now()
        if self.config.mode == "sync":
            state.buffered.append(chunk.text)
            if not chunk.final:
                return None
            return UserChunk(" ".join(t.strip() for t in state.buffered if t.strip()),
                             final=True, spoken_at=chunk.spoken_at)
        return chunk

    def _inject(self, text: str, state: TurnState) -> None:
        self.transcript.add("user", text)
        self.trace.add("inject", text=text)
        state.wants_step = True

    def _check_idle(self, state: TurnState) -> None:
        """A model that paused after the user finished, with nothing left to wait for, would
        wait for ever: tell it to answer."""
        idle = (state.generation is None and not state.wants_step and self.queue.empty()
                and state.final_heard and not self.graph.pending()
                and (state.commit is None or state.commit.done()))
        if idle:
            self._model_error("the user has finished and no call is pending: answer now",
                              state)
            self._maybe_step(state)

    # The model ----------------------------------------------------------------------------

    def _maybe_step(self, state: TurnState) -> None:
        if state.generation is not None or not state.wants_step or state.answer is not None:
            return
        state.steps += 1
        if state.steps > self.config.max_steps:
            raise TurnFailed(f"no answer after {self.config.max_steps} model steps")
        state.wants_step = False
        self._generations += 1
        number = self._generations
        context = Context(self.system, tuple(self.transcript.segments), self.tools)
        task = asyncio.create_task(self._pump(number, context), name=f"generation-{number}")
        state.generation = Generation(number, task, StreamParser(book=self.book))
        self.trace.add("generation_start", generation=number, step=state.steps)

    async def _pump(self, number: int, context: Context) -> None:
        try:
            async with aclosing(self.backend.stream(context)) as stream:
                async for delta in stream:
                    self.queue.put_nowait(ModelDelta(number, delta))
            self.queue.put_nowait(ModelDone(number))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the backend's failure is reported, not swallowed
            self.queue.put_nowait(ModelFailed(number, repr(error)))

    async def _stop(self, state: TurnState, *, upto: int | None = None,
                    keep_all: bool = False, suffix: str = "") -> str:
        """Stop the generation; keep its text up to ``upto`` (all of it with ``keep_all``) in
        the transcript. Returns the text dropped."""
        generation, state.generation = state.generation, None
        if generation is None:
            return ""
        generation.task.cancel()
        await asyncio.gather(generation.task, return_exceptions=True)
        text = generation.parser.text
        end = len(text) if keep_all or upto is None else upto
        self.transcript.add("assistant", text[:end] + suffix)
        self.trace.add("generation_end", generation=generation.number, text=text[:end] + suffix)
        return text[end:]

    async def _interrupt(self, state: TurnState) -> None:
        generation = state.generation
        assert generation is not None
        parser = generation.parser
        state.interrupts += 1
        if parser.incomplete == "think":
            dropped = await self._stop(state, keep_all=True, suffix=protocol.THINK_INTERRUPTED)
        else:
            dropped = await self._stop(state, upto=parser.complete_end)
        self.trace.add("interrupt", generation=generation.number, dropped=dropped,
                       in_tag=parser.incomplete)

    async def _on_delta(self, delta: str, state: TurnState) -> None:
        generation = state.generation
        assert generation is not None
        for element in generation.parser.feed(delta):
            await self._on_element(element, state)
            if state.generation is not generation:
                return  # the element ended the step

    async def _on_done(self, state: TurnState) -> None:
        generation = state.generation
        assert generation is not None
        tail = generation.parser.finish()
        await self._stop(state, keep_all=True)
        if tail is not None:
            self._model_error(tail.message, state)
        elif not generation.acted:
            self._model_error("each step ends with an action: <tool_call>, <remove>, <pause/> "
                              "or <answer>", state)

    async def _on_element(self, element: Element, state: TurnState) -> None:
        if not isinstance(element, Think | AnswerStart | Malformed):
            if state.generation is not None:
                state.generation.acted = True
            self.trace.add("action", **_describe(element))
        if isinstance(element, Think):
            self.trace.add("think", text=element.text, interrupted=element.interrupted)
        elif isinstance(element, Malformed):
            await self._stop(state, keep_all=True)
            self._model_error(element.message, state)
        elif isinstance(element, ToolCall):
            self._on_call(element, state)
        elif isinstance(element, Remove):
            state.error_streak = 0
            self.graph.remove(element.id)
        elif isinstance(element, Pause):
            if not state.final_heard:  # after it, a pause may be what the error was about
                state.error_streak = 0
            await self._stop(state, upto=state.generation.parser.complete_end
                             if state.generation else None)
            self._commit_point(state)
        elif isinstance(element, AnswerStart):
            await self._on_answer_start(state)
        elif isinstance(element, Answer):
            await self._on_answer(element, state)

    def _on_call(self, call: ToolCall, state: TurnState) -> None:
        state.error_streak = 0
        if call.id not in self.graph.records:
            self._commit_point(state, new_call=call.id)
        self.graph.issue(call)

    def _commit_point(self, state: TurnState, new_call: int | None = None) -> None:
        if not state.final_heard or state.committed:
            return
        state.committed = True
        frozen = self.book.issued - ({new_call} if new_call is not None else set())
        self.book.frozen |= frozen
        self.trace.add("commit_point", frozen=sorted(frozen))
        state.commit = self.graph.start_commit()
        state.commit.add_done_callback(lambda task: self._after_commit(task, state))

    def _after_commit(self, task: asyncio.Task[list[External]], state: TurnState) -> None:
        """What a commit reports (kept calls that failed at commit) reaches the model like any
        event; a commit that raised is raised where the turn awaits it."""
        if not task.cancelled() and task.exception() is None:
            state.reported.extend(task.result())
        self.queue.put_nowait(CommitDone())

    async def _on_answer_start(self, state: TurnState) -> None:
        if not state.final_heard:
            await self._stop(state, keep_all=True)
            self._model_error("the user has not finished speaking: do not answer before the "
                              "final query update; pause instead", state)
            return
        assert state.generation is not None
        state.generation.answering = True
        state.answer_started_at = self.clock.now()
        self.trace.add("answer_start")
        self._commit_point(state)

    async def _on_answer(self, answer: Answer, state: TurnState) -> None:
        generation = state.generation
        assert generation is not None
        await self._stop(state, upto=generation.parser.complete_end)
        told = await self._final_commit(state)
        if told:  # a kept call failed at commit: the model must answer again
            state.answer_started_at = None
            for event in [*told, *state.deferred]:
                self._inject(render(event), state)
            state.deferred.clear()
            return
        for event in state.deferred:  # seen by the model in its next turn
            self.transcript.add("user", render(event))
        state.deferred.clear()
        state.answer = answer.text
        self.trace.add("answer", text=answer.text)

    async def _final_commit(self, state: TurnState) -> list[External]:
        """Await the commit point's commit, then commit the calls issued after it."""
        if state.commit is not None:
            await state.commit
        told, state.reported = state.reported, []
        self.book.frozen |= self.book.issued
        return [*told, *await self.graph.start_commit()]

    def _model_error(self, message: str, state: TurnState) -> None:
        state.errors += 1
        state.error_streak += 1
        self.trace.add("model_error", message=message)
        if state.error_streak > self.config.max_errors:
            raise TurnFailed(f"{state.error_streak} malformed model steps in a row; last: "
                             f"{message}")
        self._inject(protocol.render_error(message), state)


def _describe(element: Element) -> dict[str, Any]:
    if isinstance(element, ToolCall):
        return {"action": "tool_call", **element.to_json()}
    if isinstance(element, Remove):
        return {"action": "remove", "id": element.id}
    if isinstance(element, Answer):
        return {"action": "answer", "text": element.text}
    return {"action": type(element).__name__.lower()}

"""The OpenAI-compatible backend against a real local server running a real small model:
``transformers serve`` with SmolLM2-135M-Instruct from local disk, no hub.

The model's answers may be wrong (it was never taught the speculative protocol); what is
tested is the plumbing: deltas streamed as the model makes them, the server's generation
stopped when the runtime closes a stream, errors from the server turned into ``BackendError``,
and a whole turn through the runtime that ends cleanly however badly the model writes.

Seeing the server stop needs a window into it. The server runs in a subprocess, launched as
``transformers serve`` itself (its own CLI entry point, same arguments) with one addition: two
lines are logged from its streamer, when it is told the client left (``probe cancel``) and
when ``generate`` takes its next step and aborts (``probe stopped``), each with the tokens
generated so far. Nothing else of the server changes. Its generations run one at a time on a
single inference thread, so a request that completes after a cancel also shows the cancelled
generation has given the thread back.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIError, APIStatusError, AsyncOpenAI

from agent_worker.backends.openai_chat import OpenAIChatBackend
from agent_worker.clock import Clock, WallClock
from agent_worker.errors import BackendError, TurnFailed
from agent_worker.events import UserChunk
from agent_worker.model import Context
from agent_worker.runtime import AgentConfig
from tests.agent_worker.conftest import World

pytest.importorskip("transformers", reason="the local-model extra is not installed")

# Runs the transformers CLI in this interpreter after wrapping two methods of its streamer
# with a log line each (see the module docstring); argv is the CLI's.
LAUNCHER = """
import sys
from transformers.cli.serving import utils
from transformers.cli.transformers import main

streamer = utils.DirectStreamer
cancel, put = streamer.cancel, streamer.put

def logged_cancel(self):
    print(f"probe cancel tokens={self.total_tokens}", flush=True)
    cancel(self)

def logged_put(self, value):
    if self._cancelled.is_set():
        print(f"probe stopped tokens={self.total_tokens}", flush=True)
    put(self, value)

streamer.cancel, streamer.put = logged_cancel, logged_put
sys.argv = ["transformers", *sys.argv[1:]]
sys.exit(main())
"""
READY_S = 300.0  # loading is quick, but the CPU is shared: a generous bound, for failures only


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    port: int
    model: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def backend(self, **options: Any) -> OpenAIChatBackend:
        options.setdefault("model", self.model)
        return OpenAIChatBackend.create(base_url=self.base_url, **options)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probes(self, kind: str) -> list[int]:
        """Tokens generated at each ``probe <kind>`` line so far."""
        return [int(n) for n in re.findall(rf"^probe {kind} tokens=(\d+)$", self.log(), re.M)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: LocalServer) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"transformers serve exited with {server.process.returncode}:\n"
                        f"{server.log()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=2).is_success:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"transformers serve not ready after {READY_S} s:\n{server.log()[-3000:]}")


@pytest.fixture(scope="module")
def local_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[LocalServer]:
    """``transformers serve <SmolLM2 dir>`` on a free port, the model pinned and preloaded."""
    model, port = str(smollm2_dir.resolve()), _free_port()
    log_path = tmp_path_factory.mktemp("transformers-serve") / "server.log"
    # One torch thread: the cores are shared, and oversubscribed threads make decoding
    # several times slower here.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", LAUNCHER, "serve", model, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LocalServer(process, port, model, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _context(text: str) -> Context:
    return Context("You are a helpful assistant.", (("user", text),))


async def _collect(stream: AsyncGenerator[str, None]) -> list[str]:
    return [delta async for delta in stream]


# Streaming and cancel ------------------------------------------------------------------------

def test_deltas_stream_as_the_real_model_writes(local_server: LocalServer) -> None:
    backend = local_server.backend(max_tokens=16)
    context = _context("Say hello.")

    async def main() -> tuple[list[str], str | None]:
        deltas = await _collect(backend.stream(context))
        whole = await backend.client.chat.completions.create(
            model=backend.model, messages=context.messages(),  # type: ignore[arg-type]
            max_tokens=16, temperature=0.0)
        return deltas, whole.choices[0].message.content

    deltas, whole = asyncio.run(main())
    # Several pieces, at most one per token, and together the model's whole (greedy) answer.
    assert 1 < len(deltas) <= 16, deltas
    assert all(deltas)
    assert "".join(deltas) == whole


def test_closing_the_generator_stops_the_servers_generation(local_server: LocalServer) -> None:
    budget = 4096  # far more than the test could wait for: only a cancel ends it early
    backend = local_server.backend(max_tokens=budget)
    stopped_before = len(local_server.probes("stopped"))
    cancels_before = len(local_server.probes("cancel"))

    async def main() -> tuple[list[str], list[str]]:
        got: list[str] = []
        stream = backend.stream(_context("Count from 1 to 5000, one number per line."))
        async for delta in stream:
            got.append(delta)
            if len(got) == 3:
                break
        await stream.aclose()  # what the runtime does when an event interrupts the model
        after = await _collect(local_server.backend(max_tokens=4).stream(_context("Hi!")))
        return got, after

    got, after = asyncio.run(main())
    assert len(got) == 3
    # The next request was served: the single inference thread was free again, and the log
    # says why — the cancelled generation aborted a few tokens in, not at its budget.
    assert after, "the request after the cancel got no text"
    stopped = local_server.probes("stopped")[stopped_before:]
    assert len(stopped) == 1, local_server.log()[-2000:]
    assert 3 <= stopped[0] < budget
    cancels = local_server.probes("cancel")
    assert len(cancels) == cancels_before + 1, "the server missed the client going"


# Errors from the server ----------------------------------------------------------------------

def test_an_error_event_mid_stream_is_a_backend_error(local_server: LocalServer) -> None:
    """max_tokens=0 passes the request checks; ``generate`` then refuses it on the server's
    inference thread, after the 200 and the first chunk: the error arrives as an SSE event."""
    backend = local_server.backend(max_tokens=0)
    with pytest.raises(BackendError) as caught:
        asyncio.run(_collect(backend.stream(_context("Hi!"))))
    cause = caught.value.__cause__
    assert isinstance(cause, APIError) and not isinstance(cause, APIStatusError)
    assert "max_new_tokens" in str(cause.body)


def test_a_refused_request_is_a_backend_error_naming_the_model(
        local_server: LocalServer) -> None:
    backend = local_server.backend(model="some-other-model", max_tokens=4)
    with pytest.raises(BackendError, match="some-other-model") as caught:
        asyncio.run(_collect(backend.stream(_context("Hi!"))))
    cause = caught.value.__cause__
    assert isinstance(cause, APIStatusError) and cause.status_code == 400
    assert "pinned" in str(cause.body)


# A whole turn ----------------------------------------------------------------------------------

@dataclass
class Responses:
    """Counts the model server's responses as their headers arrive: the server has taken the
    request and the model is on it (reading its prompt, ~10 s on a busy CPU, then writing)."""

    count: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def seen(self, response: httpx.Response) -> None:
        self.count += 1
        self.changed.set()

    async def since(self, mark: int) -> None:
        while self.count <= mark:
            self.changed.clear()
            await self.changed.wait()

    def backend(self, server: LocalServer, **options: Any) -> OpenAIChatBackend:
        """The backend as ``create`` makes it, on an HTTP client that reports here."""
        http = httpx.AsyncClient(event_hooks={"response": [self.seen]})
        client = AsyncOpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0,
                             http_client=http)
        return OpenAIChatBackend(client, server.model, **options)


async def _speak_over(clock: Clock, model: Responses, chunks: Sequence[str],
                      ) -> AsyncIterator[UserChunk]:
    """Each chunk once the model server is on the request that followed the chunk before, so
    every chunk but the first lands while the model generates."""
    mark = 0
    for i, text in enumerate(chunks):
        if i:
            await model.since(mark)
        mark = model.count
        yield UserChunk(text, final=i == len(chunks) - 1, spoken_at=clock.now())


CHUNKS = ["This is Ann,", "two bags of espresso", "please, and a kettle."]


def test_an_interrupted_turn_through_the_runtime_ends_cleanly(
        world: World, local_server: LocalServer) -> None:
    """Each step re-reads the whole prompt (the server keeps no cache across requests): one
    malformed step in a row is allowed, so a model that never writes the protocol fails the
    turn after the two steps that follow the utterance."""
    config = AgentConfig(max_errors=1)
    responses: list[Responses] = []
    cancels_before = len(local_server.probes("cancel"))

    def backend(clock: Clock) -> OpenAIChatBackend:
        responses.append(Responses())
        return responses[0].backend(local_server, max_tokens=24)

    run = world.play(backend, lambda clock: _speak_over(clock, responses[0], CHUNKS),
                     config=config, clock=WallClock())
    trace = run.trace
    # However the model wrote, the turn ended: with an answer, or failed cleanly after
    # max_errors + 1 malformed steps in a row, each answered with <error> until then.
    if run.error is not None:
        assert isinstance(run.error, TurnFailed), f"{run.error!r}\n{run.dump()}"
        assert "malformed model steps in a row" in str(run.error)
        assert len(trace.of("model_error")) >= config.max_errors + 1
        errors = [r for r in trace.of("inject") if r["text"].startswith("<error>")]
        assert len(errors) >= config.max_errors
        assert all(c["status"] != "committed" for c in run.calls())
    else:
        assert run.result is not None and isinstance(run.result.answer, str), run.dump()
    # Every chunk but the first stopped a generation, was injected, and the server saw those
    # streams closed.
    assert len(trace.of("interrupt")) >= len(CHUNKS) - 1, run.dump()
    injected = "".join(r["text"] for r in trace.of("inject"))
    assert f"<final_query_update>{CHUNKS[-1]}</final_query_update>" in injected
    assert all(f"<partial_query_update>{text}</partial_query_update>" in injected
               for text in CHUNKS[:-1])
    assert len(local_server.probes("cancel")) >= cancels_before + len(CHUNKS) - 1

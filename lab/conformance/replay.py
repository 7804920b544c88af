"""One τ² task through the gateway's REST API, graded by τ²'s own DB hash.

Per task: the domain's tables are reset to τ²'s seed, a session is opened, every gold action is
issued in order as the call ``<domain>.<tool>`` with client call ids "1", "2", …, and the turn
is committed as one. The tables are then exported, hashed by τ²'s ``get_pydantic_hash`` and
compared with the hash of τ²'s own replay; each step's outcome is compared with the
reference's: where the reference answered an error, the call must fail with exactly that
message, and where it succeeded, the call must end committed.

A sensitive call's refusal can come at two points: when it is staged (its preflight refuses
it; the issue response says ``failed``) or at commit, when it runs (the commit response lists
it ``failed`` and the rest of the turn commits). Both count; ``where`` records which.

Speculative variant: before each gold write (a tool whose effect class is not ``safe``), a
wrong early call is issued under the same client id with one argument changed
(``speculation.wrong_arguments``), then amended with the gold arguments (same client id,
``supersedes``) before the next gold action; a wrong call refused at once is not live and
the gold call simply reuses its id. After commit every wrong call must be ``cancelled`` (or
``failed`` at issue), never committed, and the hash must still be the reference's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from lab.conformance import reference
from lab.conformance.seeding import Seeder
from lab.conformance.speculation import wrong_arguments

COMMITTED, FAILED = "committed", "failed"
LIVE = frozenset({"proposed", "running", "held", "succeeded", "staged"})


class ReplayProblem(Exception):
    """The task could not be replayed to the end (a refused session or commit)."""


@dataclass(frozen=True, slots=True)
class Issued:
    """The answer to one ``POST …/calls``: a call (201) or a refusal."""

    status_code: int
    body: dict[str, Any]

    @property
    def call(self) -> dict[str, Any] | None:
        return self.body if self.status_code == 201 else None

    def refusal(self) -> str:
        error = self.body.get("error") or {}
        return f"refused ({self.status_code} {error.get('code')}): {error.get('message')}"


class GatewayApi:
    """The few REST routes a replay needs, on an ``httpx.Client`` that carries the base URL
    and the key (a FastAPI ``TestClient`` is one too)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = self.http.post(path, json=body)
        return response.status_code, response.json()

    def open_session(self) -> tuple[str, str]:
        status, body = self._post("/v1/sessions", {"metadata": {"harness": "tau2"}})
        if status != 201:
            raise ReplayProblem(f"session refused: {status} {body}")
        return str(body["id"]), str(body["turns"][0]["id"])

    def issue(self, session_id: str, client_id: str, tool: str, arguments: dict[str, Any],
              supersedes: str | None = None) -> Issued:
        body = {"tool": tool, "client_call_id": client_id, "arguments": arguments,
                "supersedes": supersedes}
        return Issued(*self._post(f"/v1/sessions/{session_id}/calls", body))

    def commit(self, session_id: str, turn_id: str) -> dict[str, Any]:
        status, body = self._post(f"/v1/sessions/{session_id}/turns/{turn_id}/commit", {})
        if status != 200:
            error = body.get("error") or body
            raise ReplayProblem(f"commit refused: {status} {error}")
        return body

    def cancel_turn(self, session_id: str, turn_id: str) -> None:
        """Best effort, after a failed replay: a turn left open would keep its held
        transaction, and with it locks the next task's reset waits for."""
        with contextlib.suppress(httpx.HTTPError):  # the original error is what matters
            self.http.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", json={})

    def effects(self, domain: str) -> dict[str, str]:
        """Effect class of each of the domain's tools, as the gateway registered them."""
        response = self.http.get("/v1/tools")
        response.raise_for_status()
        return {t["name"]: t["effect"] for t in response.json()["tools"]
                if t["name"].startswith(f"{domain}.")}


@dataclass(frozen=True, slots=True)
class StepOutcome:
    step: int
    tool: str
    status: str  # the call's final status, or "refused"
    error: str | None  # None: the call ended committed
    where: str  # "issue", "commit" or "" (no error)


@dataclass(frozen=True, slots=True)
class Mismatch:
    step: int
    tool: str
    expected: str  # the reference's error text, or "ok"
    got: str

    def __str__(self) -> str:
        return f"step {self.step} {self.tool}: expected {self.expected!r}, got {self.got!r}"


@dataclass(frozen=True, slots=True)
class WrongCall:
    step: int
    argument: str
    status: str  # right after issue
    final: str  # after commit


@dataclass
class TaskResult:
    task_id: str
    expected_hash: str
    db_hash: str | None = None
    steps: list[StepOutcome] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    wrong_calls: list[WrongCall] = field(default_factory=list)
    problem: str | None = None
    difference: str | None = None  # first differing step or state, when the hash differs
    seed_s: float = 0.0
    seconds: float = 0.0

    @property
    def hash_match(self) -> bool:
        return self.db_hash == self.expected_hash

    @property
    def leaked(self) -> list[WrongCall]:
        """Wrong early calls that were not undone."""
        return [w for w in self.wrong_calls if w.final not in ("cancelled", FAILED)]

    @property
    def passed(self) -> bool:
        return (self.problem is None and self.hash_match and not self.mismatches
                and not self.leaked)

    def first_difference(self) -> str:
        if self.problem:
            return self.problem
        if self.mismatches:
            return str(self.mismatches[0])
        if self.leaked:
            wrong = self.leaked[0]
            return f"step {wrong.step}: the wrong early call ended {wrong.final}"
        return self.difference or "final state differs"


@dataclass
class Replayer:
    """Replays tasks of one domain against one gateway."""

    api: GatewayApi
    seeder: Seeder
    domain: str
    speculative: bool = False
    effects: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.effects:
            self.effects = self.api.effects(self.domain)

    def run(self, ref: reference.ReferenceRun) -> TaskResult:
        started = time.perf_counter()
        result = TaskResult(task_id=ref.task_id, expected_hash=ref.db_hash)
        try:
            result.seed_s = self.seeder.reset()
            result.steps, result.wrong_calls = self._replay(ref)
            data = self.seeder.export()
            result.db_hash = reference.db_hash(self.domain, data)
        except (ReplayProblem, httpx.HTTPError, ValidationError, SQLAlchemyError) as error:
            result.problem = f"{type(error).__name__}: {error}"
        else:
            result.mismatches = compare(ref, result.steps)
            if not result.hash_match:
                result.difference = state_difference(self.domain, data, ref, self.effects)
        result.seconds = time.perf_counter() - started
        return result

    def _replay(self, ref: reference.ReferenceRun
                ) -> tuple[list[StepOutcome], list[WrongCall]]:
        session_id, turn_id = self.api.open_session()
        try:
            return self._calls(ref, session_id, turn_id)
        except BaseException:
            self.api.cancel_turn(session_id, turn_id)
            raise

    def _calls(self, ref: reference.ReferenceRun, session_id: str, turn_id: str
               ) -> tuple[list[StepOutcome], list[WrongCall]]:
        issued: list[Issued] = []
        early: list[tuple[int, str, Issued]] = []
        for number, step in enumerate(ref.steps, 1):
            tool, client_id, supersedes = f"{self.domain}.{step.name}", str(number), None
            wrong = self._wrong(step) if self.speculative else None
            if wrong is not None:
                argument, arguments = wrong
                first = self.api.issue(session_id, client_id, tool, arguments)
                early.append((number, argument, first))
                if first.call is not None and first.call["status"] in LIVE:
                    supersedes = client_id
            issued.append(self.api.issue(session_id, client_id, tool, step.arguments,
                                         supersedes))
        turn = self.api.commit(session_id, turn_id)
        final = {call["id"]: call for call in turn["calls"]}
        steps = [outcome(n, s.name, i, final)
                 for n, (s, i) in enumerate(zip(ref.steps, issued, strict=True), 1)]
        return steps, [_settled(n, a, i, final) for n, a, i in early]

    def _wrong(self, step: reference.Step) -> tuple[str, dict[str, Any]] | None:
        effect = self.effects.get(f"{self.domain}.{step.name}")
        if effect is None or effect == "safe":
            return None
        return wrong_arguments(self.domain, step.name, step.arguments)


def outcome(step: int, tool: str, issued: Issued, final: dict[str, dict[str, Any]]
            ) -> StepOutcome:
    """How one gold call ended: its status after commit and where an error showed."""
    call = issued.call
    if call is None:
        return StepOutcome(step, tool, "refused", issued.refusal(), "issue")
    last = final.get(call["id"], call)
    status = str(last["status"])
    if status == COMMITTED:
        return StepOutcome(step, tool, status, None, "")
    where = "issue" if call["status"] == FAILED else "commit"
    message = (last.get("error") or {}).get("message")
    if status != FAILED:
        message = f"call ended {status}" + (f": {message}" if message else "")
    return StepOutcome(step, tool, status, str(message), where)


def _settled(step: int, argument: str, issued: Issued,
             final: dict[str, dict[str, Any]]) -> WrongCall:
    call = issued.call
    if call is None:
        return WrongCall(step, argument, "refused", FAILED)
    return WrongCall(step, argument, str(call["status"]),
                     str(final.get(call["id"], call)["status"]))


def compare(ref: reference.ReferenceRun, steps: list[StepOutcome]) -> list[Mismatch]:
    """Steps whose outcome differs from the reference's (ok vs error, or the error text)."""
    mismatches = []
    for expected, got in zip(ref.steps, steps, strict=True):
        want = None if expected.ok else str(expected.output)
        if want != got.error:
            mismatches.append(Mismatch(got.step, got.tool, want or "ok", got.error or "ok"))
    return mismatches


def state_difference(domain: str, data: dict[str, Any], ref: reference.ReferenceRun,
                     effects: dict[str, str]) -> str:
    """Where the final state differs from the reference's, named by the first write step that
    mentions the differing record. Both DBs as τ²'s model dumps them; the first record that
    differs is diffed with τ²'s DeepDiff (the whole DB would take seconds)."""
    expected, got = reference.final_db(domain, ref), reference.normalized(domain, data)
    path, before, after = _first_difference(expected, got)
    if path is None:
        return "final state differs only in what τ²'s hash sees"
    where = f"{path}: expected {_short(before)}, got {_short(after)}"
    for number, step in enumerate(ref.steps, 1):
        if effects.get(f"{domain}.{step.name}", "safe") == "safe":
            continue
        if any(isinstance(v, str) and f"[{v!r}]" in path for v in step.arguments.values()):
            return f"step {number} {step.name}: {where}"
    return f"final state: {where}"


def _first_difference(expected: dict[str, Any], got: dict[str, Any]
                      ) -> tuple[str | None, Any, Any]:
    """(DeepDiff path, expected value, value found) of the first difference, in table and
    record order; (None, …) when there is none."""
    from deepdiff import DeepDiff

    for table in sorted(expected.keys() | got.keys()):
        mine, theirs = expected.get(table), got.get(table)
        if not (isinstance(mine, dict) and isinstance(theirs, dict)):
            pairs = [({table: mine}, {table: theirs})]
        else:
            keys = [*mine, *(k for k in theirs if k not in mine)]
            pairs = [({table: {k: mine.get(k)}}, {table: {k: theirs.get(k)}}) for k in keys
                     if mine.get(k) != theirs.get(k)]
        for before, after in pairs:
            diff = DeepDiff(before, after, view="tree")
            levels = sorted((lv for report in diff.values() for lv in report),
                            key=lambda lv: lv.path())
            if levels:
                return levels[0].path(), levels[0].t1, levels[0].t2
    return None, None, None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

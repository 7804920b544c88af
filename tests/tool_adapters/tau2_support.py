"""What the τ²-domain adapter tests (``test_retail``, ``test_airline``) share: τ²'s seed in a
database of the domain's own, tool calls made the way the gateway makes them, and τ²'s replay of
the same actions to compare with.

Calls go through the gateway's own turn holder (``TurnHold.run``): each in a savepoint of one
held transaction, kept when the tool returns and rolled back when it raises; a sensitive tool is
preflighted first, in a savepoint rolled back afterwards, as when the gateway stages it. A
comparison with τ² covers each step's ok flag and output (as canonical JSON, so 128 and 128.0
differ) or error text, and τ²'s hash of the final database.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session

from gateway.tools.registry import load_adapter, load_registry
from gateway.transactions.holder import HeldConnection, TurnHold
from lab.conformance import reference
from lab.conformance.seeding import tau2data
from tests.conftest import named_database
from tool_adapters.sdk import Adapter, Effect, Runner, ToolContext, ToolError

Action = tuple[str, dict[str, Any]]
IDLE_TIMEOUT_MS = 120_000  # a scenario's turn is open while it waits for τ²'s replay


@contextmanager
def seeded_engine(pg_home: Path, domain: str) -> Iterator[Engine]:
    """An engine on database ``sg_<domain>``, holding τ²'s seed, loaded and committed once."""
    engine = create_engine(named_database(pg_home, f"sg_{domain}"))
    metadata = load_adapter(domain).metadata
    assert metadata is not None
    with engine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
        tau2data(domain).load_tau2_db(conn, reference.seed_data(domain))
    try:
        yield engine
    finally:
        engine.dispose()


# --- calls as the gateway makes them ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    output: Any  # the tool's JSON-ready result, or the error message

    def reported(self) -> tuple[bool, str]:
        """The outcome as τ² hands it to the agent (text that is JSON is read as JSON), in a
        form where 128 and 128.0 differ."""
        if not self.ok:
            return False, str(self.output)
        output = self.output
        if isinstance(output, str):
            try:
                output = json.loads(output)
            except ValueError:
                return True, json.dumps(output)
        return True, json.dumps(output, sort_keys=True)


class Turn:
    """One turn transaction on the adapter's database, held by the gateway's ``TurnHold``."""

    def __init__(self, engine: Engine, adapter: Adapter, *, lock_timeout_ms: int) -> None:
        self.adapter = adapter
        self.hold = TurnHold("turn", "sgtest", lock_timeout_ms, IDLE_TIMEOUT_MS,
                             release=lambda _: None)
        self.held = HeldConnection(str(engine.url), engine, gid=None,
                                   lock_timeout_ms=lock_timeout_ms,
                                   idle_timeout_ms=IDLE_TIMEOUT_MS)

    @property
    def conn(self) -> Connection:
        return self.held.conn

    def run(self, name: str, arguments: dict[str, Any], *, preflight: bool = False,
            keep: bool = True) -> Any:
        """The tool (or its preflight) in a savepoint of the turn, kept afterwards if ``keep``;
        raises what the tool raises, with its savepoint rolled back."""
        spec = self.adapter.tool(name)
        call_id = uuid.uuid4().hex

        def body(session: Session) -> Any:
            ctx = ToolContext(call_id=call_id, idempotency_key=call_id, tenant="tau2",
                              session_id="session", turn_id=self.hold.turn_id, db=session)
            return spec.run_preflight(ctx, arguments) if preflight else spec.invoke(ctx, arguments)

        return self.hold.run(self.held, call_id, body, keep=keep, timeout_s=spec.timeout_s)

    def call(self, name: str, arguments: dict[str, Any]) -> Outcome:
        """One call; a sensitive tool is preflighted first, as the gateway does on staging."""
        try:
            if self.adapter.tool(name).preflight is not None:
                self.run(name, arguments, preflight=True, keep=False)
            return Outcome(True, self.run(name, arguments))
        except ToolError as error:
            return Outcome(False, error.message)


@contextmanager
def open_turn(engine: Engine, adapter: Adapter, *,
              lock_timeout_ms: int = 10_000) -> Iterator[Turn]:
    """A turn that is rolled back at the end, whatever it did."""
    turn = Turn(engine, adapter, lock_timeout_ms=lock_timeout_ms)
    try:
        yield turn
    finally:
        turn.held.close()


def db_hash(conn: Connection, domain: str) -> str:
    """τ²'s hash of our export taken as it is, without τ²'s model validating it first: equal only
    if the export is exactly what τ² would dump, and quicker."""
    from tau2.utils import get_dict_hash

    return str(get_dict_hash(tau2data(domain).export_tau2_db(conn)))


def final_hash(turn: Turn, seed_hash: str) -> str:
    """``db_hash`` of the turn's state. Postgres gives a transaction an id at its first write
    (even one rolled back to a savepoint), so without one the tables still hold the committed
    seed and the costly export is skipped."""
    if turn.conn.execute(text("SELECT pg_current_xact_id_if_assigned()")).scalar() is None:
        return seed_hash
    return db_hash(turn.conn, turn.adapter.name)


# --- τ²'s side --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """Actions to run here and in τ²: a task's gold actions, or a scripted scenario."""

    id: str
    actions: list[Action]


def task_cases(domain: str) -> list[Case]:
    return [Case(str(task.id), reference.gold_actions(task)) for task in reference.tasks(domain)]


@contextmanager
def replayed_by_tau2(domain: str, cases: Sequence[Case]
                     ) -> Iterator[Mapping[str, Future[reference.ReferenceRun]]]:
    """τ²'s replay of each case, by id, worked out in another process while ours run: τ²'s
    replays and hashes would otherwise be half of a module's time."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield {case.id: pool.submit(reference.replay_actions, domain, case.actions, case.id)
               for case in cases}
    finally:
        pool.shutdown(cancel_futures=True)  # a failed run does not wait for the rest


def differences(turn: Turn, case: Case, theirs: reference.ReferenceRun,
                seed_hash: str) -> list[str]:
    """Run the case's actions in ``turn``; describe every way our run differs from τ²'s."""
    problems = [] if theirs.valid else [f"case {case.id!r}: {theirs.problem}"]
    for index, (step, (name, arguments)) in enumerate(zip(theirs.steps, case.actions,
                                                          strict=True)):
        ours = turn.call(name, arguments)
        if ours.reported() != Outcome(step.ok, step.output).reported():
            problems.append(f"case {case.id!r} step {index} {name}({arguments}): "
                            f"τ² {(step.ok, step.output)!r:.300} != "
                            f"ours {(ours.ok, ours.output)!r:.300}")
    if final_hash(turn, seed_hash) != theirs.db_hash:
        problems.append(f"case {case.id!r}: final DB hash differs")
    return problems


def differences_each_in_a_turn(engine: Engine, adapter: Adapter, cases: Sequence[Case],
                               runs: Mapping[str, Future[reference.ReferenceRun]],
                               seed_hash: str) -> list[str]:
    """``differences`` of every case from τ²'s run of it, each in a turn of its own."""
    problems = []
    for case in cases:
        theirs = runs[case.id].result()  # before the turn opens: no transaction waits on τ²
        with open_turn(engine, adapter) as turn:
            problems += differences(turn, case, theirs, seed_hash)
    return problems


# --- the adapter's declaration ----------------------------------------------------------------


def _documented_effects(domain: str) -> dict[str, str]:
    page = Path(__file__).parents[2] / "docs" / "adapters" / f"{domain}.md"
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", page.read_text(encoding="utf-8"), re.M)
    return dict(rows)


def assert_classified_as_documented(domain: str, effects: Mapping[str, Effect]) -> None:
    """The registry sees ``effects``, which is the table of the adapter's docs page; every tool
    runs in the database, none needs approval, and exactly the sensitive ones have a preflight."""
    registry = load_registry([domain])
    seen = {tool.spec.name: tool.describe()["effect"] for tool in registry}
    assert seen == {name: effect.value for name, effect in effects.items()}
    assert seen == _documented_effects(domain)
    for tool in registry:
        assert tool.spec.runner is Runner.DB, tool.name
        assert tool.spec.requires_approval is False, tool.name
        sensitive = tool.spec.effect is Effect.SENSITIVE
        assert (tool.spec.preflight is not None) == sensitive, tool.name


def _shape(parameters: dict[str, Any]) -> dict[str, Any]:
    """Argument names, JSON types, enums and item types (a list of τ²'s models is described
    differently on each side, so only primitive item types are compared)."""
    properties = {name: (field.get("type"), field.get("enum"), field.get("items", {}).get("type"))
                  for name, field in parameters["properties"].items()}
    return {"properties": properties, "required": sorted(parameters.get("required", []))}


def assert_typed_like_tau2(adapter: Adapter) -> None:
    """The adapter has τ²'s tools, with τ²'s argument names and JSON types, each described."""
    environment = import_module(f"tau2.domains.{adapter.name}.environment").get_environment()
    theirs = {name: t.openai_schema["function"]["parameters"]
              for name, t in environment.tools.get_tools().items()}
    ours = {spec.name: spec.parameters for spec in adapter.tools}
    assert sorted(ours) == sorted(theirs)
    for name, parameters in ours.items():
        assert _shape(parameters) == _shape(theirs[name]), name
        assert adapter.tool(name).description, name

"""τ²-bench conformance in CI: a subset of each domain's tasks through a real gateway.

The full runs are ``specgate conformance tau2 --domain retail|airline [--speculative]``; here 20
tasks per domain, spread over the task list, are replayed through an in-process gateway (the
real app on the tests' Postgres) exactly as the command does: reset to τ²'s seed, every gold
action as a call of one turn, commit, export, τ²'s own hash, and each step's error text against
τ²'s. The speculative variant (a wrong early call before each write, amended before commit)
runs on a few of them, with the adapter's tables on another database than the ledger, so that
turn commits by two-phase commit. A domain whose adapter is not there yet is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from gateway.migrate import setup_adapters
from tests.conftest import make_settings

pytest.importorskip("tau2")
from lab.conformance import reference  # noqa: E402  (needs τ²)
from lab.conformance.replay import (  # noqa: E402
    GatewayApi,
    Replayer,
    TaskResult,
    state_difference,
)
from lab.conformance.run import CI_TASKS, select_tasks  # noqa: E402
from lab.conformance.seeding import Seeder  # noqa: E402


def _adapter_ready(domain: str) -> bool:
    return importlib.util.find_spec(f"tool_adapters.{domain}.tau2data") is not None


DOMAINS = [pytest.param(d, marks=pytest.mark.skipif(not _adapter_ready(d),
                                                     reason=f"no {d} adapter yet"))
           for d in reference.DOMAINS]


@dataclass
class Seeded:
    domain: str
    settings: Settings
    seeder: Seeder


def _seeded(domain: str, pg_home: Path, ledger_url: str, tool_url: str | None) -> Seeded:
    settings = make_settings(pg_home, ledger_url).model_copy(update={
        "adapters": [domain], "tool_database_urls": {domain: tool_url} if tool_url else {}})
    setup_adapters(settings)
    seeder = Seeder(domain, tool_url or ledger_url)
    seeder.prepare()
    return Seeded(domain, settings, seeder)


@pytest.fixture(scope="module", params=DOMAINS)
def domain(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def local(domain: str, pg_home: Path, ledger_url: str) -> Iterator[Seeded]:
    """The domain's tables in the ledger database: a turn commits as one local transaction."""
    seeded = _seeded(domain, pg_home, ledger_url, None)
    yield seeded
    seeded.seeder.close()


@pytest.fixture(scope="module")
def two_phase(domain: str, pg_home: Path, ledger_url: str, tool_url: str) -> Iterator[Seeded]:
    """The domain's tables in another database: a turn commits by two-phase commit."""
    seeded = _seeded(domain, pg_home, ledger_url, tool_url)
    yield seeded
    seeded.seeder.close()


@pytest.fixture(scope="module")
def ci_references(domain: str) -> Iterator[reference.ReplaysAhead]:
    """τ²'s replays of the CI subset, made in a worker process from the moment the module
    starts, so the first test replays through the gateway while the later tasks' references
    are still being made."""
    references = reference.ReplaysAhead(domain, select_tasks(domain, CI_TASKS))
    yield references
    references.close()


ReplayerFactory = Callable[[Seeded], Replayer]


@pytest.fixture
def replayer(gateway_factory: Any, ledger_url: str, tenant: str) -> ReplayerFactory:
    """A replayer on a fresh in-process gateway over the given seeded tables."""
    from gateway.auth.service import create_key
    from gateway.db import make_engine

    engine = make_engine(ledger_url, pool_size=1)
    _, key = create_key(engine, tenant, "app")
    engine.dispose()

    def build(seeded: Seeded) -> Replayer:
        client = gateway_factory(seeded.settings)
        client.headers["Authorization"] = f"Bearer {key}"
        return Replayer(GatewayApi(client), seeded.seeder, seeded.domain)

    return build


def _effects(domain: str) -> dict[str, str]:
    """Effect class of each tool of the domain, as its adapter registers it."""
    from gateway.tools.registry import load_adapter

    return {f"{domain}.{t.name}": str(t.effect) for t in load_adapter(domain).tools}


def _failures(results: list[TaskResult]) -> list[str]:
    return [f"task {r.task_id}: {r.first_difference()}" for r in results if not r.passed]


def _writes(ref: reference.ReferenceRun, effects: dict[str, str], domain: str) -> list[str]:
    return [effects[f"{domain}.{s.name}"] for s in ref.steps
            if effects.get(f"{domain}.{s.name}", "safe") != "safe"]


def test_the_ci_subset_matches_tau2_through_the_gateway(
        ci_references: reference.ReplaysAhead, local: Seeded, replayer: ReplayerFactory) -> None:
    replay = replayer(local)
    references, results = [], []
    for ref in ci_references:  # each as soon as τ²'s replay of it is ready
        assert ref.valid, ref.problem
        references.append(ref)
        results.append(replay.run(ref))
    assert _failures(results) == []
    assert sum(len(r.steps) for r in results) == sum(len(r.steps) for r in references)


def test_the_ci_subset_is_spread_and_covers_errors_and_sensitive_writes(
        domain: str, ci_references: reference.ReplaysAhead) -> None:
    references = list(ci_references)
    ids = [r.task_id for r in references]
    every = [str(t.id) for t in reference.tasks(domain)]
    assert len(ids) == CI_TASKS and ids[0] == every[0] and ids[-1] == every[-1]
    assert any("sensitive" in _writes(r, _effects(domain), domain) for r in references)
    if domain == "retail":  # τ²'s airline gold actions never fail
        assert any(not step.ok for r in references for step in r.steps)


def _speculative_references(domain: str) -> list[reference.ReferenceRun]:
    """A few tasks, each the first of its kind in τ²'s list: a reversible write (its wrong
    early call is held, then rolled back), two sensitive writes (staged, then dropped), and
    (retail: τ²'s airline gold never fails) a task with writes where τ² refuses an action."""
    effects, tasks = _effects(domain), reference.tasks(domain)

    def writes(task: Any) -> list[str]:
        classes = [effects.get(f"{domain}.{name}", "safe")
                   for name, _ in reference.gold_actions(task)]
        return [c for c in classes if c != "safe"]

    chosen = [next(t for t in tasks if "reversible" in writes(t)),
              next(t for t in tasks if writes(t).count("sensitive") > 1)]
    runs = [reference.replay(domain, t) for t in chosen]
    if domain == "retail":
        with_writes = (reference.replay(domain, t) for t in tasks if writes(t))
        runs.append(next(r for r in with_writes if any(not s.ok for s in r.steps)))
    return list({r.task_id: r for r in runs}.values())


def test_wrong_early_calls_amended_before_commit_leave_no_trace(
        domain: str, two_phase: Seeded, replayer: ReplayerFactory) -> None:
    replay = replayer(two_phase)
    replay.speculative = True
    results = [replay.run(ref) for ref in _speculative_references(domain)]
    assert len(results) >= 2 and _failures(results) == []
    wrong = [w for r in results for w in r.wrong_calls]
    assert wrong and all(w.final in ("cancelled", "failed") for w in wrong)
    assert {"held", "staged"} <= {w.status for w in wrong}  # they really took effect


def _refused_writes(domain: str) -> list[tuple[str, dict[str, Any]]]:
    """Writes τ² refuses on its seed: a reversible and a sensitive one per domain."""
    data = reference.seed_data(domain)
    if domain == "retail":
        order = next(o for o in data["orders"].values() if o["status"] == "delivered")
        address = dict(order["address"])
        return [("modify_pending_order_address", {"order_id": order["order_id"], **address}),
                ("cancel_pending_order", {"order_id": order["order_id"],
                                          "reason": "no longer needed"})]
    booking = next(r for r in data["reservations"].values() if len(r["passengers"]) > 1)
    return [("update_reservation_passengers", {"reservation_id": booking["reservation_id"],
                                               "passengers": booking["passengers"][1:]}),
            ("update_reservation_baggages", {"reservation_id": booking["reservation_id"],
                                             "total_baggages": 9, "nonfree_baggages": 9,
                                             "payment_id": "credit_card_0000000"})]


def test_a_refused_write_comes_back_with_tau2s_text_and_changes_nothing(
        domain: str, local: Seeded, replayer: ReplayerFactory) -> None:
    replay = replayer(local)
    seed_hash = reference.db_hash(domain, reference.seed_data(domain))
    for action in _refused_writes(domain):
        ref = reference.replay_actions(domain, [action])
        assert not ref.steps[0].ok and ref.db_hash == seed_hash
        result = replay.run(ref)
        step = result.steps[0]
        assert (step.status, step.error) == ("failed", ref.steps[0].output), result
        assert step.where in ("issue", "commit")  # preflight, or the staged call at commit
        assert result.db_hash == seed_hash and result.passed


def _refused_at_commit(domain: str) -> list[tuple[str, dict[str, Any]]]:
    """Two sensitive writes where τ² refuses the second only because of the first: retail, a
    payment change of an order just cancelled; airline, a second booking of a flight's last
    seat."""
    data = reference.seed_data(domain)
    if domain == "retail":
        order, payment = next(
            (o, method) for o in data["orders"].values() if o["status"] == "pending"
            for method in data["users"][o["user_id"]]["payment_methods"]
            if method != o["payment_history"][0]["payment_method_id"]
            and not method.startswith("gift_card"))
        return [("cancel_pending_order", {"order_id": order["order_id"],
                                          "reason": "ordered by mistake"}),
                ("modify_pending_order_payment", {"order_id": order["order_id"],
                                                  "payment_method_id": payment})]
    number, date, cabin, flight = next(
        (number, date, cabin, flight) for number, flight in data["flights"].items()
        for date, status in flight["dates"].items() if status["status"] == "available"
        for cabin, seats in status["available_seats"].items() if seats == 1)
    user = next(u for u in data["users"].values()
                if any(m["source"] == "credit_card" for m in u["payment_methods"].values()))
    card = next(m["id"] for m in user["payment_methods"].values() if m["source"] == "credit_card")
    price = flight["dates"][date]["prices"][cabin]
    return [("book_reservation", {
        "user_id": user["user_id"], "origin": flight["origin"],
        "destination": flight["destination"], "flight_type": "one_way", "cabin": cabin,
        "flights": [{"flight_number": number, "date": date}],
        "passengers": [{"first_name": name, "last_name": "Doe", "dob": "1990-01-01"}],
        "payment_methods": [{"payment_id": card, "amount": price}], "total_baggages": 0,
        "nonfree_baggages": 0, "insurance": "no"}) for name in ("Ann", "Bob")]


def test_a_staged_call_refused_at_commit_fails_alone_with_tau2s_text(
        domain: str, local: Seeded, replayer: ReplayerFactory) -> None:
    """The second call passes its preflight (the first is only staged then) and is refused
    when it runs at commit, in τ²'s words; the rest of the turn commits, so the hash is τ²'s."""
    ref = reference.replay_actions(domain, _refused_at_commit(domain))
    assert [s.ok for s in ref.steps] == [True, False]
    result = replayer(local).run(ref)
    assert result.passed, result.first_difference()
    assert [(s.status, s.where) for s in result.steps] == [("committed", ""),
                                                          ("failed", "commit")]


def test_the_command_replays_through_a_gateway_server_and_writes_json(
        pg_home: Path, ledger_url: str, tmp_path: Path) -> None:
    """``specgate conformance tau2`` end to end, on the tests' database: a gateway child
    process, the summary line, the JSON, exit status 0."""
    domain = next((d for d in reference.DOMAINS if _adapter_ready(d)), None)
    if domain is None:
        pytest.skip("no τ² adapter yet")
    out = tmp_path / "run.json"
    env = {**os.environ, "SPECGATE_DATABASE_URL": ledger_url, "SPECGATE_HOME": str(pg_home)}
    done = subprocess.run(
        [sys.executable, "-m", "specgate", "conformance", "tau2", "--domain", domain,
         "--tasks", "3", "--speculative", "--out", str(out), "--home", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{domain} (speculative): 3/3 hash match, 0 error-text mismatches" in " ".join(
        done.stdout.split())
    report = json.loads(out.read_text())
    assert report["ok"] and report["counted"] == 3 and report["leaked_wrong_calls"] == 0
    assert report["machine"]["cpu_count"] and report["machine"]["postgres"]  # what timed it
    assert [t["task_id"] for t in report["tasks"]] == [
        str(t.id) for t in select_tasks(domain, 3)]


def test_the_command_refuses_an_unknown_domain() -> None:
    from typer.testing import CliRunner

    from specgate.cli import app

    result = CliRunner().invoke(app, ["conformance", "tau2", "--domain", "telecom"])
    assert result.exit_code == 2 and "retail, airline" in result.output


def test_a_differing_state_is_named_by_the_write_that_touched_it(
        domain: str, ci_references: reference.ReplaysAhead) -> None:
    effects = _effects(domain)
    ref = next(r for r in ci_references if any(s.ok and s.name in _WRITE_KEYS[domain]
                                               for s in r.steps))
    step = next(s for s in ref.steps if s.ok and s.name in _WRITE_KEYS[domain])
    record = step.arguments[_WRITE_KEYS[domain][step.name]]
    data = reference.final_db(domain, ref)
    data["orders" if domain == "retail" else "reservations"][record]["user_id"] = "someone_else"
    difference = state_difference(domain, data, ref, effects)
    assert difference.startswith("step "), difference  # named by a write, not "final state"
    assert record in difference and "someone_else" in difference
    assert state_difference(domain, reference.final_db(domain, ref), ref, effects).startswith(
        "final state differs only")


_WRITE_KEYS = {
    "retail": {"cancel_pending_order": "order_id", "modify_pending_order_address": "order_id",
               "return_delivered_order_items": "order_id"},
    "airline": {"cancel_reservation": "reservation_id",
                "update_reservation_flights": "reservation_id"},
}

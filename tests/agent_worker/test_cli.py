"""``specgate agent`` end to end: a served gateway (``specgate serve`` child process, real
HTTP), the oracle on a simulated clock, the answer on stdout and the trace as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent_worker.cli import app
from gateway.auth.service import create_key
from gateway.db import make_engine
from lab.servers import LocalGateway
from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import shop_state

TASK = {
    "utterance": "Hi, this is Ann. Please add 2 bags of espresso to a new order. Thanks.",
    "calls": [
        {"id": 1, "name": "demo.create_order", "arguments": {"customer": "Ann"}},
        {"id": 2, "name": "demo.add_item", "depends_on": [1],
         "arguments": {"order_id": "$1.order_id", "sku": "espresso", "quantity": 2}},
    ],
    "answer": "Two bags of espresso are on your order, Ann.",
}


def test_agent_command_runs_a_session_against_a_served_gateway(
        pg_home: Path, ledger_url: str, tenant: str, tmp_path: Path) -> None:
    reset_shop(ledger_url, make_settings(pg_home, ledger_url))
    engine = make_engine(ledger_url, pool_size=1)
    _, key = create_key(engine, tenant, "app")
    engine.dispose()
    task, trace = tmp_path / "task.json", tmp_path / "trace.jsonl"
    task.write_text(json.dumps(TASK))
    env = {"SPECGATE_HOME": str(pg_home), "SPECGATE_DATABASE_URL": ledger_url,
           "SPECGATE_ADAPTERS": '["demo"]'}
    with LocalGateway(env=env, log_path=tmp_path / "gateway.log") as server:
        result = CliRunner().invoke(app, [
            "--key", key, "--gateway", server.url, "--task", str(task), "--simulated",
            "--profile", "edge", "--tool-latency", "0.5-1", "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == TASK["answer"]
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "session" and kinds[-1] == "turn_end"
    assert all(b["t"] >= a["t"] for a, b in zip(records, records[1:], strict=False))
    end = records[-1]
    assert end["post_turn_latency"] is not None and end["post_turn_latency"] >= 0
    items = shop_state(ledger_url)["demo_order_items"]
    assert [(i["sku"], i["quantity"]) for i in items] == [("espresso", 2)]


def test_agent_command_refuses_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--key", "k", "--backend", "oracle", "--text", "hi"])
    assert result.exit_code != 0 and "needs --task" in result.output
    result = CliRunner().invoke(app, ["--key", "k", "--tool-latency", "fast"])
    assert result.exit_code != 0 and "tool latency" in result.output
    result = CliRunner().invoke(app, ["--key", "k", "--backend", "openai", "--simulated",
                                      "--text", "hi"])
    assert result.exit_code != 0 and "needs the oracle" in result.output


def test_agent_command_reports_an_unreachable_gateway(tmp_path: Path) -> None:
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    result = CliRunner().invoke(app, ["--key", "k", "--gateway", "http://127.0.0.1:9",
                                      "--task", str(task), "--simulated"])
    assert result.exit_code == 1 and "agent failed" in result.output

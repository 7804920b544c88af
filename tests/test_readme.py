"""The README's turn example, run as written against a live gateway.

The fenced shell block after the heading "What a turn looks like" runs in bash against a
``specgate serve`` child process on the test database. Only three things change: the port,
the path of the ``specgate`` script (this interpreter's), and the ``SPECGATE_*`` environment
that points the commands at the test database. Afterwards the block's output, the ledger and
the demo shop must match what the README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from gateway.children import settings_env
from lab.servers import LocalGateway
from tests.conftest import make_settings, reset_shop

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## What a turn looks like"
SPECGATE = Path(sys.executable).parent / "specgate"


def readme_block(heading: str, language: str) -> str:
    """The first fenced block in ``language`` after ``heading`` in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert heading in readme, f"the README has no heading {heading!r}"
    after = readme.split(heading, 1)[1]
    match = re.search(rf"^```{language}\n(.*?)^```$", after, re.S | re.M)
    assert match is not None, f"no ```{language} block after {heading!r}"
    return match.group(1)


def test_the_readme_turn_example_runs_as_written(pg_home: Path, ledger_url: str,
                                                  tmp_path: Path) -> None:
    script = readme_block(HEADING, "sh")
    assert "localhost:8080" in script and ".venv/bin/specgate" in script
    settings = make_settings(pg_home, ledger_url)
    reset_shop(ledger_url, settings)
    env = settings_env(settings, ledger_url)
    started = datetime.now(UTC)
    with LocalGateway(env=env, log_path=tmp_path / "gateway.log") as gateway:
        script = (script.replace("localhost:8080", f"localhost:{gateway.port}")
                  .replace(".venv/bin/specgate", str(SPECGATE)))
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                             env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    # What the block prints: the status after each step, then the listing the README shows.
    listing = readme_block("The last command prints:", "text").splitlines()
    assert ran.stdout.splitlines() == ["held", "held", "held", "staged", "committed", *listing]

    engine = create_engine(ledger_url, poolclass=NullPool)
    with engine.connect() as conn:
        turns = conn.execute(text(
            "SELECT t.id, t.status FROM turns t JOIN sessions s ON s.id = t.session_id "
            "WHERE s.tenant = 'acme' AND s.created_at >= :started"), {"started": started}).all()
        assert [t.status for t in turns] == ["committed"]
        calls = conn.execute(text(
            "SELECT client_call_id, tool, status, resolved_arguments FROM calls "
            "WHERE turn_id = :turn ORDER BY seq"), {"turn": turns[0].id}).all()
        order = conn.execute(text(
            "SELECT id, status FROM demo_orders WHERE customer = 'Ann'")).all()
        items = conn.execute(text("SELECT sku, quantity FROM demo_order_items")).all()
        payments = conn.execute(text(
            "SELECT order_id, amount_cents, card_last4 FROM demo_payments")).all()
        stock: dict[str, int] = {
            r.sku: r.stock for r in conn.execute(text("SELECT sku, stock FROM demo_products"))}
    engine.dispose()

    assert [(c.client_call_id, c.tool, c.status) for c in calls] == [
        ("1", "demo.create_order", "committed"),
        ("2", "demo.add_item", "cancelled"),
        ("2", "demo.add_item", "committed"),
        ("3", "demo.place_order", "committed"),
    ]
    # The placeholder was resolved against call 1's result.
    assert calls[3].resolved_arguments == {"order_id": "O-ann-1", "card_last4": "4242"}
    assert order == [("O-ann-1", "placed")]
    assert items == [("grinder", 1)]  # the amended item only
    assert payments == [("O-ann-1", 8900, "4242")]  # charged once, the grinder's price
    assert stock["espresso"] == 20 and stock["grinder"] == 2  # the espresso never left stock

"""The ledger's single writer: illegal moves refused, stale batches rolled back whole, and a
tampered audit chain detected (invariant I8)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.app import create_runtime
from gateway.calls.schemas import IssueCall
from gateway.calls.service import issue_call
from gateway.ledger.audit import verify_chain
from gateway.ledger.rows import CallRow
from gateway.ledger.transitions import IllegalTransition, StaleTransition, batched, transition_call
from gateway.runtime import Runtime
from gateway.sessions.scope import scope_of
from gateway.sessions.service import create_session
from tests.conftest import make_settings, reset_shop


@pytest.fixture
def runtime(pg_home: Path, ledger_url: str) -> Iterator[Runtime]:
    settings = make_settings(pg_home, ledger_url)
    reset_shop(ledger_url, settings)
    rt = create_runtime(settings, gateway_id=f"ledger-{uuid.uuid4().hex[:6]}")
    yield rt
    rt.close()


def _two_calls(rt: Runtime, tenant: str) -> tuple[str, list[CallRow]]:
    session_id = create_session(rt, tenant, {})
    with scope_of(rt, tenant, session_id) as scope:
        for cid in ("a", "b"):
            issue_call(rt, scope, IssueCall(tool="demo.list_products", client_call_id=cid))
        return session_id, list(scope.calls)


def _statuses(rt: Runtime, session_id: str) -> list[str]:
    with rt.dbs.ledger.connect() as conn:
        return list(conn.execute(text("SELECT status FROM calls WHERE session_id = :s ORDER BY "
                                      "seq"), {"s": session_id}).scalars())


def test_illegal_and_stale_moves_are_refused(runtime: Runtime) -> None:
    session_id, (first, _) = _two_calls(runtime, f"l-{uuid.uuid4().hex[:6]}")
    with runtime.dbs.fast() as conn:
        with pytest.raises(IllegalTransition):
            transition_call(conn, first.subject, "succeeded", "held")
        with pytest.raises(StaleTransition):
            transition_call(conn, first.subject, "held", "committed")
    assert _statuses(runtime, session_id) == ["succeeded", "succeeded"]


def test_a_stale_move_in_a_batch_rolls_the_whole_batch_back(runtime: Runtime) -> None:
    session_id, (first, second) = _two_calls(runtime, f"l-{uuid.uuid4().hex[:6]}")
    with (runtime.dbs.fast() as conn, pytest.raises(StaleTransition), conn.transaction(),
          batched(conn)):
        transition_call(conn, first.subject, "succeeded", "committed")
        transition_call(conn, second.subject, "held", "committed")  # it is not held
    assert _statuses(runtime, session_id) == ["succeeded", "succeeded"]


def test_the_audit_chain_verifies_and_detects_tampering(runtime: Runtime) -> None:
    tenant = f"l-{uuid.uuid4().hex[:6]}"
    _two_calls(runtime, tenant)
    with runtime.dbs.ledger.connect() as conn:
        assert verify_chain(conn, tenant) == 7  # turn open + 2 × (proposed, running, succeeded)
        conn.execute(text("UPDATE call_events SET to_status = 'failed' WHERE tenant = :t AND "
                          "to_status = 'succeeded' AND seq = (SELECT max(seq) FROM call_events "
                          "WHERE tenant = :t)"), {"t": tenant})
        with pytest.raises(ValueError, match="breaks at event"):
            verify_chain(conn, tenant)
        conn.rollback()

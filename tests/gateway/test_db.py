"""Each thread's own ledger connection: shared by the call's read and its ledger write, and
never handed on with a transaction left open."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text

from gateway.app import create_runtime
from gateway.calls.schemas import IssueCall
from gateway.calls.service import issue_call
from gateway.db import driver
from gateway.runtime import Runtime
from gateway.sessions.scope import scope_of
from gateway.sessions.service import create_session
from gateway.tools.registry import Registry
from tests.conftest import make_settings
from tool_adapters.sdk import Adapter, ToolContext, tool


@pytest.fixture
def runtime(pg_home: Path, ledger_url: str) -> Iterator[Runtime]:
    rt = create_runtime(make_settings(pg_home, ledger_url), gateway_id=f"db-{uuid.uuid4().hex[:6]}")
    yield rt
    rt.close()


@tool(effect="safe")
def backend(ctx: ToolContext) -> int:
    """Which server process serves the read."""
    return int(ctx.session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_safe_call_reads_and_writes_on_one_connection_left_idle(runtime: Runtime) -> None:
    runtime.registry = Registry([Adapter(name="probe", tools=(backend,))])
    tenant = f"d-{uuid.uuid4().hex[:6]}"
    session_id = create_session(runtime, tenant, {})
    with runtime.dbs.fast() as conn:
        own = conn
    with scope_of(runtime, tenant, session_id) as scope:
        call, _ = issue_call(runtime, scope, IssueCall(tool="probe.backend", client_call_id="1"))
    assert call.status == "succeeded" and call.result == own.info.backend_pid
    with runtime.dbs.fast() as conn:
        assert conn is own
        assert conn.info.transaction_status == TransactionStatus.IDLE


def test_a_connection_handed_back_in_a_transaction_is_not_reused(runtime: Runtime) -> None:
    with runtime.dbs.autocommit(runtime.dbs.ledger_url) as conn:
        left_open = driver(conn)
        left_open.execute("BEGIN")
    assert left_open.closed
    with runtime.dbs.fast() as conn:
        assert conn is not left_open
        assert conn.info.transaction_status == TransactionStatus.IDLE

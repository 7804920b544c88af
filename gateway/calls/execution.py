"""Running one tool function for a call, in the right transaction, and capturing its outcome.

Where a ``db`` call runs follows from its effect class (docs/architecture.md#effect-classes):
- kept effects (reversible now, sensitive at commit) run in the turn transaction, in a savepoint
  that is kept so the call can still be undone;
- reads run in the turn transaction when one is open on that database (so they see the turn's
  own pending writes), in a savepoint rolled back afterwards, and otherwise in a read-only
  transaction that is rolled back — a "safe" tool cannot leak a write either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import exc
from sqlalchemy.orm import Session

from gateway.db import driver
from gateway.runtime import Runtime
from gateway.tools.registry import RegisteredTool
from gateway.transactions.holder import HeldConnection, ToolSession, TurnHold
from tool_adapters.sdk import ToolContext, ToolError

log = logging.getLogger("specgate.calls")


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallIdentity:
    call_id: str
    idempotency_key: str
    tenant: str
    session_id: str
    turn_id: str


def tool_context(identity: CallIdentity, tool: RegisteredTool, session: Session | None,
                 settings: Mapping[str, Any]) -> ToolContext:
    """What a tool function gets for one call (here and in the tool worker)."""
    return ToolContext(
        call_id=identity.call_id,
        idempotency_key=identity.idempotency_key,
        tenant=identity.tenant,
        session_id=identity.session_id,
        turn_id=identity.turn_id,
        db=session,
        settings=settings,
        logger=logging.getLogger(f"specgate.tool.{tool.name}"),
    )


# Database refusals a caller can act on: another turn holds the rows (retry after it is
# decided), or the tool ran past its timeout.
_DB_ERROR_CODES = {"55P03": "busy", "40P01": "busy", "57014": "timeout"}


def capture(fn: Callable[[], Any], tool_name: str, call_id: str) -> Outcome:
    """Run ``fn``; a tool's own errors are results, anything else is a bug kept in the ledger."""
    try:
        return Outcome(True, result=fn())
    except ToolError as error:
        return Outcome(False, error={"code": error.code, "message": error.message})
    except exc.DBAPIError as error:
        code = _DB_ERROR_CODES.get(getattr(error.orig, "sqlstate", None) or "")
        if code is None:
            log.exception("tool %r failed on the database in call %r", tool_name, call_id)
            code = "internal_error"
        return Outcome(False, error={"code": code, "message": str(error.orig).strip()})
    except Exception as error:  # a bug in the adapter: recorded, never a hang or a lost call
        log.exception("tool %r failed unexpectedly in call %r", tool_name, call_id)
        return Outcome(False, error={"code": "internal_error", "message": f"{error!r}"})


def run_db_tool(rt: Runtime, identity: CallIdentity, tool: RegisteredTool,
                arguments: Mapping[str, Any], *, keep: bool,
                hook: str = "invoke") -> Outcome:
    """Run a ``db``-runner tool function (or its preflight hook) for one call."""
    adapter = tool.adapter.name
    url = rt.dbs.tool_url(adapter)
    settings = rt.settings.adapter_settings.get(adapter, {})

    def body(session: Session) -> Any:
        ctx = tool_context(identity, tool, session, settings)
        if hook == "preflight":
            return tool.spec.run_preflight(ctx, arguments)
        return tool.spec.invoke(ctx, arguments)

    hold = rt.holds.get(identity.turn_id)
    held = hold.connections.get(url) if hold else None
    if held is None and keep:
        hold, held = hold_for(rt, identity.turn_id, adapter)

    def run() -> Any:
        if hold is not None and held is not None:  # in the turn transaction, in a savepoint
            return hold.run(held, identity.call_id, body, keep=keep,
                            timeout_s=tool.spec.timeout_s)
        return _read_only(rt, adapter, body, tool.spec.timeout_s)

    return capture(run, tool.name, identity.call_id)


def hold_for(rt: Runtime, turn_id: str, adapter: str) -> tuple[TurnHold, HeldConnection]:
    """The turn's transaction on the adapter's database, opened if needed. Raises
    ``Unavailable`` past the bound, so callers take it before writing anything."""
    hold = rt.holds.get_or_create(turn_id)
    held = hold.connection(rt.dbs.tool_url(adapter), rt.dbs.tool_engine(adapter),
                           rt.dbs.ledger_url, rt.holds.acquire)
    return hold, held


def _read_only(rt: Runtime, adapter: str, body: Callable[[Session], Any],
               timeout_s: float) -> Any:
    """Run a read in its own read-only transaction, rolled back. The transaction is begun and
    ended on the driver of an autocommit connection, one round trip each. SQLAlchemy's own
    transaction around it sends nothing, and lets the tool's session join rather than end
    it: the driver's ``rollback()`` would also make the connection forget its prepared
    statements."""
    with rt.dbs.autocommit(rt.dbs.tool_url(adapter)) as conn, conn.begin():
        raw = driver(conn)
        raw.execute(f"BEGIN READ ONLY; SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
        session = ToolSession(conn)
        try:
            return body(session)
        finally:
            session.close()
            if raw.info.transaction_status != TransactionStatus.IDLE:
                raw.execute("ROLLBACK")

"""The health panel: held transactions against their bound, prepared transactions and their
age, the outbox backlog, gateway and worker heartbeats, and how well speculation pays off.

Everything about calls is scoped to the tenants the key sees; process-wide figures (this
gateway's held connections, heartbeats) carry no tenant data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from gateway.ledger.states import LIVE_CALL_STATUSES, CallStatus
from gateway.ledger.transitions import now
from gateway.runtime import Runtime
from gateway.transactions.decision import turn_of_gid
from gateway.transactions.twophase import prepared_gids

WORKER_STALE_S = 15.0
_RECENT = "heartbeat_at > now() - interval '10 minutes' ORDER BY heartbeat_at DESC LIMIT 8"
SPECULATION_WINDOW_S = 24 * 3600
S = CallStatus
# A speculative call is kept when its turn committed it, dropped when the turn let it go.
KEPT = frozenset({S.COMMITTED, S.AWAITING_APPROVAL, S.APPROVED, S.DENIED, S.DISPATCHED})
DROPPED = frozenset({S.CANCELLED, S.CONFLICT, S.EXPIRED, S.ABORTED, S.COMPENSATING,
                     S.COMPENSATED, S.COMPENSATION_FAILED})


def prepared(rt: Runtime) -> list[dict[str, Any]]:
    """Our prepared transactions on every database this gateway knows: gid, database, since."""
    found = []
    for url in sorted(rt.dbs.all_urls()):
        with rt.dbs.engine_for(url).connect() as conn:
            for gid, prepared_at in prepared_gids(conn, rt.settings.gid_prefix):
                found.append({"gid": gid, "database": make_url(url).database,
                              "prepared_at": prepared_at, "turn_id": turn_of_gid(gid)})
    return found


def _age(at: datetime | None, reference: datetime) -> float | None:
    return None if at is None else max(0.0, (reference - at).total_seconds())


def _prepared_of(conn: Connection, rt: Runtime, tenants: list[str],
                 reference: datetime) -> list[dict[str, Any]]:
    every = prepared(rt)
    turn_ids = [p["turn_id"] for p in every if p["turn_id"]]
    rows = {r.id: r for r in conn.execute(text(
        "SELECT t.id, t.session_id, t.tenant, m.decision FROM turns t "
        "LEFT JOIN commit_markers m ON m.turn_id = t.id "
        "WHERE t.id = ANY(:ids) AND t.tenant = ANY(:tenants)"),
        {"ids": turn_ids, "tenants": tenants})}
    mine = []
    for p in every:
        row = rows.get(p["turn_id"])
        if row is not None:
            mine.append({**p, "session_id": row.session_id, "tenant": row.tenant,
                         "decision": row.decision, "age_s": _age(p["prepared_at"], reference)})
    return sorted(mine, key=lambda p: p["prepared_at"])


def _held(conn: Connection, rt: Runtime, tenants: list[str]) -> dict[str, Any]:
    turns = conn.execute(text(
        "SELECT count(DISTINCT t.id) FROM turns t JOIN calls c ON c.turn_id = t.id "
        "WHERE t.tenant = ANY(:tenants) AND t.status = 'open' AND c.runner = 'db' "
        "AND c.status = 'held'"), {"tenants": tenants}).scalar()
    return {"this_gateway": rt.holds.held_connections,
            "bound": rt.settings.max_held_transactions, "gateway": rt.gateway_id,
            "tenant_turns_holding": int(turns or 0)}


def _outbox(conn: Connection, tenants: list[str], reference: datetime) -> dict[str, Any]:
    summary = conn.execute(text(
        "SELECT count(*) AS pending, count(*) FILTER (WHERE o.attempts > 0) AS retrying, "
        "min(o.created_at) AS oldest, max(o.attempts) AS max_attempts, "
        "count(*) FILTER (WHERE o.kind = 'run') AS run, "
        "count(*) FILTER (WHERE o.kind = 'compensate') AS compensate "
        "FROM outbox o JOIN calls c ON c.id = o.call_id "
        "WHERE o.done_at IS NULL AND c.tenant = ANY(:tenants)"), {"tenants": tenants}).one()
    failing = conn.execute(text(
        "SELECT o.call_id, c.tool, o.kind, o.attempts, o.last_error, o.next_at "
        "FROM outbox o JOIN calls c ON c.id = o.call_id WHERE o.done_at IS NULL "
        "AND c.tenant = ANY(:tenants) AND o.last_error IS NOT NULL "
        "ORDER BY o.attempts DESC, o.id LIMIT 5"), {"tenants": tenants})
    return {"pending": summary.pending, "retrying": summary.retrying,
            "by_kind": {"run": summary.run, "compensate": summary.compensate},
            "oldest_age_s": _age(summary.oldest, reference),
            "max_attempts": summary.max_attempts or 0,
            "failing": [dict(r._mapping) for r in failing]}


def _heartbeats(conn: Connection, rt: Runtime, reference: datetime) -> dict[str, Any]:
    gateways = [
        {"id": r.id, "host": r.host, "pid": r.pid, "age_s": _age(r.heartbeat_at, reference),
         "alive": (_age(r.heartbeat_at, reference) or 0) < rt.settings.owner_lease_s,
         "this": r.id == rt.gateway_id}
        for r in conn.execute(text(
            "SELECT id, host, pid, heartbeat_at FROM gateways "
            f"WHERE {_RECENT}"))]
    workers = [
        {"id": r.id, "host": r.host, "pid": r.pid, "age_s": _age(r.heartbeat_at, reference),
         "alive": (_age(r.heartbeat_at, reference) or 0) < WORKER_STALE_S}
        for r in conn.execute(text(
            "SELECT id, host, pid, heartbeat_at FROM worker_heartbeats "
            f"WHERE {_RECENT}"))]
    last_done = conn.execute(text("SELECT max(done_at) FROM outbox")).scalar()
    return {"gateways": gateways, "workers": workers,
            "last_work_done_age_s": _age(last_done, reference)}


def speculation(conn: Connection, tenants: list[str],
                window_s: float = SPECULATION_WINDOW_S) -> dict[str, Any]:
    """Per tool, over the window: calls decided, kept (the turn committed them), dropped
    (cancelled, amended, conflicting, expired or aborted), the hit rate kept / decided, and the
    tool time spent on dropped calls (the waste)."""
    rows = list(conn.execute(text(
        "SELECT tool, count(*) AS decided, "
        "count(*) FILTER (WHERE status = ANY(:kept) OR (status IN ('succeeded', 'failed') "
        "AND decided_at IS NOT NULL)) AS kept, "
        "count(*) FILTER (WHERE status = ANY(:dropped)) AS dropped, "
        "coalesce(sum(extract(epoch FROM finished_at - started_at)) FILTER (WHERE status = "
        "ANY(:dropped)), 0) AS wasted_s "
        "FROM calls WHERE tenant = ANY(:tenants) "
        "AND created_at > now() - make_interval(secs => :window) "
        "AND NOT (status = ANY(:live) AND decided_at IS NULL) "
        "GROUP BY tool ORDER BY count(*) DESC, tool"),
        {"tenants": tenants, "window": window_s, "kept": sorted(KEPT),
         "dropped": sorted(DROPPED), "live": sorted(LIVE_CALL_STATUSES)}))
    tools = [{"tool": r.tool, "decided": r.decided, "kept": r.kept, "dropped": r.dropped,
              "failed": r.decided - r.kept - r.dropped,
              "hit_rate": r.kept / r.decided if r.decided else None,
              "wasted_s": float(r.wasted_s)} for r in rows]
    decided = sum(t["decided"] for t in tools)
    kept = sum(t["kept"] for t in tools)
    return {"window_s": window_s, "decided": decided, "kept": kept,
            "dropped": sum(t["dropped"] for t in tools),
            "hit_rate": kept / decided if decided else None,
            "wasted_s": sum(t["wasted_s"] for t in tools), "tools": tools}


def health(rt: Runtime, tenants: list[str]) -> dict[str, Any]:
    reference = now()
    with rt.dbs.ledger.connect() as conn:
        return {"at": reference, "tenants": tenants, "held": _held(conn, rt, tenants),
                "prepared": _prepared_of(conn, rt, tenants, reference),
                "outbox": _outbox(conn, tenants, reference),
                "heartbeats": _heartbeats(conn, rt, reference),
                "speculation": speculation(conn, tenants)}

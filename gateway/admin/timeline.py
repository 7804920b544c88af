"""A session on one time axis: what the user said (transcript chunks) and what speculation did
about it (every call's transitions: issued, held, amended, cancelled, committed, …).

``session_timeline`` reads the ledger; ``layout`` turns it into the geometry of the SVG that
the dashboard draws server-side (``templates/_session.html``), so the page needs no charting
code and a screen reader gets the same facts from the event table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from gateway.admin.health import DROPPED
from gateway.admin.redact import redact
from gateway.errors import NotFound
from gateway.ledger import models
from gateway.ledger.states import LIVE_CALL_STATUSES
from gateway.ledger.transitions import now

CALLS = models.table_of(models.Call)
TURNS = models.table_of(models.Turn)
EVENTS = models.table_of(models.CallEvent)
SESSIONS = models.table_of(models.Session)
CHUNKS = models.table_of(models.TranscriptChunk)
MAX_EVENTS = 2000

# The words the timeline uses for a transition (the target status, or what it means).
LABELS = {"proposed": "issued", "running": "running", "held": "held", "succeeded": "succeeded",
          "failed": "failed", "staged": "staged", "cancelled": "cancelled",
          "committed": "committed", "conflict": "conflict", "aborted": "aborted",
          "expired": "expired", "awaiting_approval": "awaiting approval",
          "approved": "approved", "denied": "denied", "dispatched": "dispatched",
          "compensating": "compensating", "compensated": "compensated",
          "compensation_failed": "compensation failed", "open": "opened",
          "committing": "committing", "cancelling": "cancelling"}


def label(event: dict[str, Any]) -> str:
    detail = event.get("detail") or {}
    if event["from"] == event["to"] and detail.get("action") == "extend_ttl":
        return "TTL extended"
    if event["to"] == "proposed" and event.get("supersedes_id"):
        return "amended (issued)"
    if event["to"] == "cancelled" and detail.get("reason") == "superseded":
        return "amended away"
    return LABELS.get(event["to"], event["to"])


def session_timeline(conn: Connection, tenants: list[str], session_id: str) -> dict[str, Any]:
    session = conn.execute(select(SESSIONS).where(
        SESSIONS.c.id == session_id, SESSIONS.c.tenant.in_(tenants))).first()
    if session is None:
        raise NotFound(f"session {session_id!r} not found")
    turns = [dict(r._mapping) for r in conn.execute(
        select(TURNS).where(TURNS.c.session_id == session_id).order_by(TURNS.c.seq))]
    calls = [dict(r._mapping) for r in conn.execute(
        select(CALLS.c.id, CALLS.c.turn_id, CALLS.c.seq, CALLS.c.client_call_id, CALLS.c.tool,
               CALLS.c.effect, CALLS.c.runner, CALLS.c.status, CALLS.c.supersedes_id,
               CALLS.c.arguments, CALLS.c.created_at)
        .where(CALLS.c.session_id == session_id).order_by(CALLS.c.created_at, CALLS.c.seq))]
    by_id = {c["id"]: c for c in calls}
    events = []
    for r in conn.execute(select(EVENTS).where(EVENTS.c.session_id == session_id)
                          .order_by(EVENTS.c.id).limit(MAX_EVENTS)):
        call = by_id.get(r.call_id or "")
        event = {"id": r.id, "entity": r.entity, "turn_id": r.turn_id, "call_id": r.call_id,
                 "from": r.from_status, "to": r.to_status, "at": r.at,
                 "detail": redact(r.detail or {}),
                 "client_call_id": call["client_call_id"] if call else None,
                 "tool": call["tool"] if call else None,
                 "supersedes_id": call["supersedes_id"] if call else None}
        event["label"] = label(event)
        events.append(event)
    chunks = [dict(r._mapping) for r in conn.execute(
        select(CHUNKS.c.id, CHUNKS.c.turn_id, CHUNKS.c.text, CHUNKS.c.final, CHUNKS.c.at)
        .where(CHUNKS.c.session_id == session_id).order_by(CHUNKS.c.at, CHUNKS.c.id))]
    for call in calls:
        call["arguments"] = redact(call["arguments"] or {})
    return {"session": {"id": session.id, "tenant": session.tenant,
                        "created_at": session.created_at, "metadata": redact(session.metadata)},
            "turns": turns, "calls": calls, "events": events, "transcript": chunks}


# --- geometry -------------------------------------------------------------------------------

WIDTH, GUTTER, RIGHT, PAD = 1000.0, 200.0, 120.0, 16.0
SPEECH_TOP, SPEECH_H, LANE_H, TURN_HEAD, TURN_GAP = 34.0, 40.0, 26.0, 20.0, 12.0
_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


@dataclass
class Layout:
    width: float
    height: float
    start: datetime
    duration_s: float
    ticks: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    lanes: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""


def _fmt(seconds: float) -> str:
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)}m{int(rest):02d}s" if rest else f"{int(minutes)}m"
    return f"{seconds:g}s"


def _bounds(data: dict[str, Any], at: datetime) -> tuple[datetime, datetime]:
    times = [data["session"]["created_at"], *(e["at"] for e in data["events"]),
             *(c["at"] for c in data["transcript"])]
    start, end = min(times), max(times)
    if any(t["status"] == "open" for t in data["turns"]):
        end = max(end, at)
    return start, max(end, start + timedelta(seconds=1))


def layout(data: dict[str, Any], at: datetime | None = None) -> Layout:
    """Positions for the SVG: x from time, one lane per call grouped by turn, speech on top."""
    start, end = _bounds(data, at or now())
    duration = (end - start).total_seconds()
    span = WIDTH - GUTTER - RIGHT

    def x(t: datetime) -> float:
        return round(GUTTER + span * (t - start).total_seconds() / duration, 1)

    step = next((s for s in _STEPS if duration / s <= 8), _STEPS[-1])
    out = Layout(WIDTH, 0.0, start, duration)
    out.ticks = [{"x": x(start + timedelta(seconds=i * step)), "label": _fmt(i * step)}
                 for i in range(int(duration / step) + 1)]
    chunks = data["transcript"]
    for i, chunk in enumerate(chunks):
        until = chunks[i + 1]["at"] if i + 1 < len(chunks) else chunk["at"] + timedelta(
            seconds=0.6)
        x0, x1 = x(chunk["at"]), max(x(until), x(chunk["at"]) + 3)
        out.chunks.append({**chunk, "x": x0, "w": round(x1 - x0, 1),
                           "offset": _fmt(round((chunk["at"] - start).total_seconds(), 1))})
    _lanes(data, out, x, at or now())
    kept = sum(1 for lane in out.lanes if any(m["to"] == "committed" for m in lane["marks"]))
    dropped = sum(1 for lane in out.lanes if lane["status"] in DROPPED)
    out.summary = (f"{len(out.lanes)} calls over {_fmt(round(duration, 1))}: {kept} kept, "
                   f"{dropped} dropped; {len(chunks)} transcript chunks")
    return out


def _lanes(data: dict[str, Any], out: Layout, x: Any, at: datetime) -> None:
    y = SPEECH_TOP + SPEECH_H + TURN_GAP
    events_of: dict[str, list[dict[str, Any]]] = {}
    for event in data["events"]:
        if event["call_id"]:
            events_of.setdefault(event["call_id"], []).append(event)
    row_of: dict[str, float] = {}
    for turn in data["turns"]:
        calls = [c for c in data["calls"] if c["turn_id"] == turn["id"]]
        top = y
        y += TURN_HEAD
        for call in calls:
            marks = events_of.get(call["id"], [])
            first = marks[0]["at"] if marks else call["created_at"]
            last = marks[-1]["at"] if marks else first
            if turn["status"] == "open" and call["status"] in LIVE_CALL_STATUSES:
                last = at
            lane_y = y + LANE_H / 2
            row_of[call["id"]] = lane_y
            out.lanes.append({
                "call": call, "y": lane_y, "x0": x(first), "x1": max(x(last), x(first) + 2),
                "status": call["status"],
                "marks": [{"x": x(e["at"]), "to": e["to"], "label": e["label"],
                           "offset": _fmt(round((e["at"] - out.start).total_seconds(), 2))}
                          for e in marks]})
            y += LANE_H
        end = turn["decided_at"] or at
        out.turns.append({"turn": turn, "x0": x(turn["opened_at"]),
                          "x1": max(x(end), x(turn["opened_at"]) + 2), "y": top,
                          "h": y - top})
        y += TURN_GAP
    for lane in out.lanes:
        old = lane["call"]["supersedes_id"]
        if old in row_of:
            out.links.append({"x": lane["x0"], "y0": row_of[old], "y1": lane["y"]})
    out.height = y + PAD

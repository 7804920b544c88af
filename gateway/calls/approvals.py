"""Approval of calls (docs/architecture.md#effect-classes): after its turn commits, a call that
needs approval waits in ``awaiting_approval`` until an admin or the app approves or denies it.

Which calls: tools declared ``requires_approval=True``, plus what the tenant's policy adds
(``Settings.approval_policy``: tool names or ``class:<effect>``). The app approves with the
single-use confirmation token it got when the call was staged (so a voice agent can read the
action back and ask "shall I?"); the token is bound to the call's tool and argument digest and
expires with the approval. Only its hash is stored. An approval writes the call's outbox row in
the same transaction, so the tool worker runs it once; a denial leaves no effect.

A ``db`` call's effect lives in its turn transaction, so once a ``db`` call needing approval has
run at commit the whole transaction is PREPAREd (docs/architecture.md#two-phase-commit) and
every ``db`` call with an effect in it waits with it: the decision ``approval`` in the commit
marker keeps the reconciler off. The last approval turns it into ``commit`` (COMMIT PREPARED,
every waiting call ``succeeded``); the first denial, or an expired approval, into ``abort``
(ROLLBACK PREPARED, every waiting call ``denied``, or ``failed`` if it was approved already).
Calls that wait only because they share the transaction are decided with it and cannot be
approved on their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, text

from gateway.config import Settings
from gateway.errors import Conflict, Forbidden
from gateway.ledger.rows import CallRow, load_call
from gateway.ledger.states import CallStatus
from gateway.ledger.transitions import (
    CallMove,
    StaleTransition,
    now,
    transition_call,
    transition_calls,
)
from gateway.runtime import Runtime
from gateway.tasks.outbox import RUN, enqueue
from gateway.tools.registry import RegisteredTool
from gateway.transactions.decision import ABORT, APPROVAL, COMMIT
from gateway.transactions.twophase import finish_prepared

S = CallStatus
TOKEN_PREFIX = "sgc_"


def needs_approval(settings: Settings, tenant: str, tool: RegisteredTool) -> bool:
    if tool.spec.requires_approval:
        return True
    rules = {*settings.approval_policy.get("*", []), *settings.approval_policy.get(tenant, [])}
    return tool.name in rules or f"class:{tool.spec.effect}" in rules


def digest(tool: str, arguments: Any) -> str:
    canonical = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(tool.encode() + b"\n" + canonical).hexdigest()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(settings: Settings, call: CallRow) -> str:
    """Give a staged call its confirmation token (returned once; only the hash is kept)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    call.confirm_token_hash = _hash(token)
    call.confirm_digest = digest(call.tool, call.arguments)
    call.approval_expires_at = now() + timedelta(seconds=settings.approval_ttl_s)
    return token


def _load(rt: Runtime, tenant: str, call_id: str) -> CallRow:
    with rt.dbs.ledger.connect() as conn:
        return load_call(conn, call_id, [tenant])


def _check_token(call: CallRow, token: str | None) -> None:
    if token is None:
        raise Forbidden("an app key approves or denies only with the call's confirm_token",
                        code="confirm_token_required")
    valid = call.confirm_token_hash is not None and hmac.compare_digest(
        call.confirm_token_hash, _hash(token))
    if not valid or call.confirm_digest != digest(call.tool, call.arguments):
        raise Forbidden("this confirm_token is not valid for this call (used already, or "
                        "issued for another call or other arguments)", code="invalid_confirm_token")


def decide(rt: Runtime, tenant: str, call_id: str, *, approve: bool, admin: bool,
           token: str | None, reason: str | None) -> CallRow:
    """Approve or deny a call awaiting approval. Raises a clear 4xx and changes nothing when
    the call is not waiting, the token is wrong or used, or the approval has expired."""
    call = _load(rt, tenant, call_id)
    if call.status != S.AWAITING_APPROVAL:
        raise Conflict(f"call {call_id!r} is {call.status}, not awaiting approval",
                       code="not_awaiting_approval")
    if not admin:
        _check_token(call, token)
    if call.approval_expires_at is not None and call.approval_expires_at < now():
        raise Conflict(f"the approval of call {call_id!r} expired at "
                       f"{call.approval_expires_at.isoformat()}", code="approval_expired")
    detail = {"by": "admin" if admin else "confirm_token", "reason": reason}
    if call.runner == "db":
        return _decide_held(rt, call, approve=approve, detail=detail)
    try:
        return _decide_task(rt, call, approve=approve, detail=detail)
    except StaleTransition as error:
        raise Conflict(f"call {call_id!r} was decided meanwhile", code="not_awaiting_approval"
                       ) from error


def _decide_task(rt: Runtime, call: CallRow, *, approve: bool,
                 detail: dict[str, Any]) -> CallRow:
    """Approve a ``task`` call (its outbox row in the same transaction) or deny it. Raises
    ``StaleTransition`` if it was decided meanwhile."""
    target = S.APPROVED if approve else S.DENIED
    values: dict[str, Any] = {"confirm_token_hash": None, "decided_at": now()}
    if not approve:
        values["finished_at"] = now()
    with rt.dbs.fast() as conn, conn.transaction():
        transition_call(conn, call.subject, call.status, target, values, detail)
        if approve:
            enqueue(conn, [call.id], RUN, rt.settings.relay_grace_s)
    if approve:
        rt.publish([call.id])
    call.status = target
    for key, value in values.items():
        setattr(call, key, value)
    return call


def _decide_held(rt: Runtime, call: CallRow, *, approve: bool,
                 detail: dict[str, Any]) -> CallRow:
    """Approve or deny a ``db`` call whose turn transaction is prepared, under a lock of the
    turn's commit marker (approvals of calls of one turn queue there)."""
    try:
        with rt.dbs.ledger.begin() as conn:
            gids, members = _lock_held_turn(conn, call)
            me = next((m for m in members if m.id == call.id), None)
            if me is None or me.status != S.AWAITING_APPROVAL:
                raise Conflict(f"call {call.id!r} was decided meanwhile",
                               code="not_awaiting_approval")
            if not me.requires_approval:
                owners = [m.id for m in members if m.requires_approval]
                raise Conflict(f"call {call.id!r} needs no approval of its own: it shares its "
                               f"turn transaction with {owners}, approve or deny those",
                               code="approval_not_required")
            decision = _held_moves(conn, members, me, approve, detail)
            if decision is not None:
                conn.execute(text("UPDATE commit_markers SET decision = :d WHERE turn_id = :t"),
                             {"d": decision, "t": call.turn_id})
    except StaleTransition as error:
        raise Conflict(f"call {call.id!r} was decided meanwhile",
                       code="not_awaiting_approval") from error
    if decision is not None:
        engines = [rt.dbs.engine_for(url) for url in sorted(rt.dbs.all_urls())]
        finish_prepared(engines, gids, commit=decision == COMMIT)
    return _load(rt, call.tenant, call.id)


def _lock_held_turn(conn: Connection, call: CallRow) -> tuple[list[str], list[CallRow]]:
    marker = conn.execute(text("SELECT decision, gid FROM commit_markers WHERE turn_id = :t "
                               "FOR UPDATE"), {"t": call.turn_id}).first()
    if marker is None or marker.decision != APPROVAL:
        raise Conflict(f"call {call.id!r} is not awaiting approval (its turn is decided)",
                       code="not_awaiting_approval")
    rows = conn.execute(text(
        "SELECT * FROM calls WHERE turn_id = :t AND runner = 'db' "
        "AND status IN ('awaiting_approval', 'approved') ORDER BY created_at, id"),
        {"t": call.turn_id})
    return [g for g in (marker.gid or "").split(",") if g], [CallRow.from_row(r) for r in rows]


def _held_moves(conn: Connection, members: list[CallRow], me: CallRow, approve: bool,
                detail: dict[str, Any]) -> str | None:
    """Record this approval or denial; returns the turn's decision once it is made."""
    at = now()
    others = [m for m in members if m.id != me.id]
    if approve:
        transition_call(conn, me.subject, S.AWAITING_APPROVAL, S.APPROVED,
                        {"confirm_token_hash": None, "decided_at": at}, detail)
        if any(m.requires_approval and m.status == S.AWAITING_APPROVAL for m in others):
            return None  # more approvals to come
        riders = [m for m in others if m.status == S.AWAITING_APPROVAL]
        transition_calls(conn, [
            CallMove(m.subject, S.AWAITING_APPROVAL, S.APPROVED, {"decided_at": at})
            for m in riders])
        transition_calls(conn, [
            CallMove(m.subject, S.APPROVED, S.SUCCEEDED, {"decided_at": at, "finished_at": at})
            for m in members])
        return COMMIT
    transition_call(conn, me.subject, S.AWAITING_APPROVAL, S.DENIED,
                    {"confirm_token_hash": None, "decided_at": at, "finished_at": at}, detail)
    error = {"code": "denied_with_turn",
             "message": f"call {me.id!r} of the same turn transaction was denied"}
    transition_calls(conn, [
        CallMove(m.subject, m.status, S.DENIED if m.status == S.AWAITING_APPROVAL else S.FAILED,
                 {"decided_at": at, "finished_at": at, "error": error})
        for m in others])
    return ABORT


def deny_expired(rt: Runtime) -> int:
    """The reaper's part: deny every call whose approval has expired. Returns how many."""
    with rt.dbs.ledger.connect() as conn:
        calls = [CallRow.from_row(r) for r in conn.execute(text(
            "SELECT * FROM calls WHERE status = 'awaiting_approval' "
            "AND approval_expires_at < now() LIMIT 500"))]
    denied = 0
    expired = {"reason": "approval expired"}
    for call in calls:
        try:
            if call.runner == "db":
                _decide_held(rt, call, approve=False, detail=expired)
            else:
                _decide_task(rt, call, approve=False, detail=expired)
            denied += 1
        except (Conflict, StaleTransition):
            pass  # decided meanwhile, or not its own approval (it goes with its turn)
    return denied

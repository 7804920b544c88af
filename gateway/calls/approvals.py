"""Approval of calls (DESIGN §2): after its turn commits, a call that needs approval waits in
``awaiting_approval`` until an admin or the app approves or denies it.

Which calls: tools declared ``requires_approval=True``, plus what the tenant's policy adds
(``Settings.approval_policy``: tool names or ``class:<effect>``). The app approves with the
single-use confirmation token it got when the call was staged (so a voice agent can read the
action back and ask "shall I?"); the token is bound to the call's tool and argument digest and
expires with the approval. Only its hash is stored. An approval writes the call's outbox row in
the same transaction, so the tool worker runs it once; a denial leaves no effect.

Calls of the ``db`` runner that need approval are refused at issue for now: DESIGN §3 holds
their whole turn PREPAREd across the approval, which this gateway does not do yet.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import text

from gateway.calls.state import CallState
from gateway.config import Settings
from gateway.errors import Conflict, Forbidden, NotFound
from gateway.ledger.service import RUN, StaleTransition, enqueue, now, transition_call
from gateway.ledger.states import CallStatus
from gateway.runtime import Runtime
from gateway.tools.registry import RegisteredTool

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


def issue_token(settings: Settings, call: CallState) -> str:
    """Give a staged call its confirmation token (returned once; only the hash is kept)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    call.confirm_token_hash = _hash(token)
    call.confirm_digest = digest(call.tool, call.arguments)
    call.approval_expires_at = now() + timedelta(seconds=settings.approval_ttl_s)
    return token


def _load(rt: Runtime, tenant: str, call_id: str) -> CallState:
    with rt.dbs.ledger.connect() as conn:
        row = conn.execute(text("SELECT * FROM calls WHERE id = :c AND tenant = :t"),
                           {"c": call_id, "t": tenant}).first()
    if row is None:
        raise NotFound(f"call {call_id!r} not found")
    return CallState.from_row(row)


def _check_token(call: CallState, token: str | None) -> None:
    if token is None:
        raise Forbidden("an app key approves or denies only with the call's confirm_token",
                        code="confirm_token_required")
    valid = call.confirm_token_hash is not None and hmac.compare_digest(
        call.confirm_token_hash, _hash(token))
    if not valid or call.confirm_digest != digest(call.tool, call.arguments):
        raise Forbidden("this confirm_token is not valid for this call (used already, or "
                        "issued for another call or other arguments)", code="invalid_confirm_token")


def decide(rt: Runtime, tenant: str, call_id: str, *, approve: bool, admin: bool,
           token: str | None, reason: str | None) -> CallState:
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
    target = S.APPROVED if approve else S.DENIED
    values: dict[str, Any] = {"confirm_token_hash": None, "decided_at": now()}
    if not approve:
        values["finished_at"] = now()
    detail = {"by": "admin" if admin else "confirm_token", "reason": reason}
    try:
        with rt.dbs.fast() as conn, conn.transaction():
            transition_call(conn, call.subject, call.status, target, values, detail)
            if approve:
                enqueue(conn, [call.id], RUN, rt.settings.relay_grace_s)
    except StaleTransition as error:
        raise Conflict(f"call {call_id!r} was decided meanwhile", code="not_awaiting_approval"
                       ) from error
    if approve:
        rt.publish([call.id])
    call.status = target
    for key, value in values.items():
        setattr(call, key, value)
    return call


def deny_expired(rt: Runtime) -> int:
    """The reaper's part: deny every call whose approval has expired. Returns how many."""
    with rt.dbs.ledger.connect() as conn:
        calls = [CallState.from_row(r) for r in conn.execute(text(
            "SELECT * FROM calls WHERE status = 'awaiting_approval' "
            "AND approval_expires_at < now() LIMIT 500"))]
    denied = 0
    for call in calls:
        try:
            with rt.dbs.fast() as conn:
                transition_call(conn, call.subject, S.AWAITING_APPROVAL, S.DENIED,
                                {"confirm_token_hash": None, "decided_at": now(),
                                 "finished_at": now()}, {"reason": "approval expired"})
            denied += 1
        except StaleTransition:
            continue  # decided meanwhile
    return denied

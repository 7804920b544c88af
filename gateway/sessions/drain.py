"""Draining: a gateway stopped with SIGTERM loses no committed work and strands no session.

On SIGTERM ``specgate serve`` keeps serving while it drains (``DrainingServer``), then stops:

1. it takes no new session, no session it does not own and no new turn (503 ``draining`` with
   ``Retry-After``: the client's retry reaches a gateway that stays);
2. it lets go of every session whose turn holds no transaction here, at once and again as turns
   end, so the other gateways claim them on their next request;
3. it lets the open turns that hold a transaction here finish (commit or cancel, forwarded to
   it by the other gateways) for up to ``drain_grace_s``;
4. it cancels what is still open then, with a reason that says so, lets those sessions go, and
   exits.

A rolling deploy therefore sees at most retryable 503s; a turn cut by the grace period is
cancelled (its held effects rolled back), never left to a lease.
"""

from __future__ import annotations

import logging
import threading
import time
from signal import SIGTERM
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

from gateway.ledger.rows import load_scope
from gateway.ledger.transitions import fenced
from gateway.runtime import Runtime
from gateway.turns import service as turns_service
from gateway.turns.recovery import owned_epoch

log = logging.getLogger("specgate.drain")
REASON = ("the gateway holding this turn was stopped before the turn was committed (drain "
          "grace period over); its held effects were rolled back")


def _owned(rt: Runtime) -> list[tuple[str, str]]:
    with rt.dbs.ledger.connect() as conn:
        rows = conn.execute(text("SELECT id, tenant FROM sessions WHERE owner_id = :me"),
                            {"me": rt.gateway_id})
        return [(row.id, row.tenant) for row in rows]


def _let_go(rt: Runtime, *, cancel: bool) -> tuple[int, int]:
    """Let go of every owned session whose turn holds no transaction here; with ``cancel``,
    first cancel the open turns that still do. Returns (sessions let go, turns cancelled)."""
    released = cancelled = 0
    held = _held_sessions(rt)
    for session_id, tenant in _owned(rt):
        if session_id in held and not cancel:
            continue
        with rt.session_lock(session_id):  # no request of the session is running meanwhile
            with rt.dbs.ledger.connect() as conn:
                scope = load_scope(conn, tenant, session_id)
            if rt.holds.get(scope.turn.id) is not None:
                if not cancel:
                    continue  # a call was held since the list was read: wait for its turn
                epoch = owned_epoch(rt, session_id, tenant)
                if epoch is None:  # taken over meanwhile: the turn is the new owner's
                    rt.holds.release(scope.turn.id)
                    continue
                with fenced(session_id, epoch):
                    cancelled += turns_service.end_held(rt, scope, REASON)
            rt.disown(session_id)
            released += 1
    return released, cancelled


def _held_sessions(rt: Runtime) -> set[str]:
    """The sessions whose turns hold a transaction on this gateway now."""
    turn_ids = rt.holds.turn_ids()
    if not turn_ids:
        return set()
    with rt.dbs.ledger.connect() as conn:
        rows = conn.execute(text("SELECT session_id FROM turns WHERE id = ANY(:ids)"),
                            {"ids": turn_ids})
        return {row.session_id for row in rows}


def drain(rt: Runtime, grace_s: float, poll_s: float = 0.2) -> dict[str, float]:
    """Steps 1–4 above; returns what it did, for the log and the tests."""
    started = time.monotonic()
    rt.draining = True
    released, _ = _let_go(rt, cancel=False)
    while rt.holds.turn_ids() and time.monotonic() - started < grace_s:
        time.sleep(poll_s)
        released += _let_go(rt, cancel=False)[0]
    more, cancelled = _let_go(rt, cancel=True)
    counts = {"released": released + more, "cancelled": cancelled,
              "seconds": round(time.monotonic() - started, 2)}
    log.warning("drained: %s", counts)
    return counts


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on the first SIGTERM drains the gateway (still serving) before
    it shuts down; a second SIGTERM, or Ctrl-C, stops it at once as before."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace_s = grace_s
        self._draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != SIGTERM or self._draining is not None:
            super().handle_exit(sig, frame)
            return
        self._draining = threading.Thread(target=self._drain, args=(sig, frame),
                                          name="specgate-drain", daemon=True)
        self._draining.start()

    def _drain(self, sig: int, frame: FrameType | None) -> None:
        try:
            drain(self._app.state.runtime, self._grace_s)
        except Exception:
            log.exception("drain failed; stopping now")
        super().handle_exit(sig, frame)

"""The per-request turn scope: what every request on a session works inside.

``scope_of`` owns the session for this gateway (taking it over, and recovering its turn, when
its previous owner is dead), takes the session's lock (a session's open turn owns one database
connection, so its requests run one at a time) and yields the turn with its calls: from the
runtime's cache when this gateway has been the only writer, otherwise from the ledger. A request
that fails drops the cached scope, which may be half-updated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.calls import service as calls_service
from gateway.ledger.rows import TurnScope, load_scope
from gateway.ledger.transitions import Fenced, fenced
from gateway.runtime import Runtime
from gateway.turns import recovery


@contextmanager
def scope_of(rt: Runtime, tenant: str, session_id: str,
             turn_id: str | None = None) -> Iterator[TurnScope]:
    """Own the session, take its lock and load the turn (latest when ``turn_id`` is None)."""
    claim = rt.claim(session_id, tenant)
    with rt.session_lock(session_id), fenced(session_id, claim.epoch):
        if claim.recover:
            recovery.recover_session(rt, tenant, session_id)
        scope = rt.scopes.get(session_id)
        if scope is None or (turn_id is not None and scope.turn.id != turn_id):
            with rt.dbs.ledger.connect() as conn:
                scope = load_scope(conn, tenant, session_id, turn_id)
            if turn_id is None:
                rt.scopes[session_id] = scope
        else:  # the worker writes its calls behind the cache
            calls_service.refresh(rt, calls_service.unsettled(scope))
        rt.holds.touch(scope.turn.id)
        try:
            yield scope
        except Fenced:
            rt.lost(session_id)
            raise
        except BaseException:
            rt.forget_scope(session_id)  # it may be half-updated: read it again next time
            raise
        finally:
            rt.holds.touch(scope.turn.id)  # a long request leaves the turn just used

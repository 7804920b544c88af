"""The state of one gateway process: settings, engines, registry, held turns, session locks.

A container and the session-ownership lease, nothing more: it imports no domain module at run
time (the parts it holds are built by ``gateway.app.create_runtime`` and only named here as
types), so every domain may depend on it and it on none of them.

Requests of one session are serialised by a per-session lock, because a session's open turn
owns one database connection that cannot run two statements at once. Sessions are owned by one
gateway at a time (``sessions.owner_id``), alive while its heartbeat is fresh and Postgres holds
its presence lock (``gateway.presence``); a request for a session that another live gateway owns
is refused with 409 ``session_owned_elsewhere`` naming the owner and its address, which the
gateway's front (``gateway.sessions.forwarding``) turns into a forward. Ownership is cached for
``owner_recheck_s`` only, then claimed again: a gateway that was paused while another took its
sessions over learns it on its next request, instead of serving from a stale belief. And the
ownership it claimed carries the session's epoch, the fencing token every ledger write of the
session checks in its own statement: a write made while the belief was stale is refused.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import text

from gateway.config import Settings
from gateway.db import Databases
from gateway.errors import NotFound, OwnedElsewhere, draining
from gateway.presence import ALIVE

if TYPE_CHECKING:  # types only: the parts are built by gateway.app.create_runtime
    from gateway.calls.settled import SettleListener
    from gateway.ledger.rows import TurnScope
    from gateway.tasks.outbox import LazyPublisher
    from gateway.tools.registry import Registry
    from gateway.transactions.holder import HeldTurns

# One statement, in autocommit: take the session if it is ours or its owner is gone, and read
# who owned it before (the outer SELECT sees the row as it was): the owner when it was not
# taken (epoch NULL), no row at all for a session that is not the tenant's. Taking it from
# anyone else (or from no one) moves its epoch on: writes made under the previous epoch are
# refused from then on (gateway.ledger.transitions).
_CLAIM = text(
    f"""
    WITH claimed AS (
        UPDATE sessions s SET owner_id = :me, owner_seen_at = now(),
               epoch = s.epoch + CASE WHEN s.owner_id = :me THEN 0 ELSE 1 END
         WHERE s.id = :sid AND s.tenant = :tenant AND (s.owner_id = :me OR (
               NOT :draining AND (s.owner_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM gateways g WHERE g.id = s.owner_id AND {ALIVE}))))
        RETURNING s.epoch)
    SELECT s.owner_id AS previous, g.url, (SELECT epoch FROM claimed) AS epoch
      FROM sessions s LEFT JOIN gateways g ON g.id = s.owner_id
     WHERE s.id = :sid AND s.tenant = :tenant
    """
)


class SessionLock:
    """A re-entrant lock of one session; weakly referable, so it is freed when unused."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> SessionLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class SessionLocks:
    """One lock per session, held weakly: only sessions with a request in flight keep one."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, SessionLock] = (
            weakref.WeakValueDictionary())
        self._guard = threading.Lock()

    def __call__(self, session_id: str) -> SessionLock:
        with self._guard:
            lock = self._locks.get(session_id)
            if lock is None:
                lock = self._locks[session_id] = SessionLock()
            return lock

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._locks


K = TypeVar("K")
V = TypeVar("V")


class LruDict(OrderedDict[K, V]):
    """A dict that forgets its least recently used entries past ``bound``."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.bound:
            self.popitem(last=False)


def default_gateway_id(port: int | None = None) -> str:
    """Stable across restarts of the same server, so a restarted gateway recognises the
    sessions its previous life owned and recovers them at once."""
    return f"{socket.gethostname()}:{port if port is not None else os.getpid()}"


@dataclass(frozen=True, slots=True)
class Claim:
    """A session owned, under ``epoch`` (the fencing token to write under). ``recover``: it
    was taken from another gateway, or another gateway owned it since this one last did, so
    its turn is to be recovered before it is served."""

    epoch: int
    recover: bool = False


@dataclass
class Runtime:
    settings: Settings
    dbs: Databases
    registry: Registry
    holds: HeldTurns
    settled: SettleListener  # wakes requests waiting for task calls (gateway.calls.settled)
    publisher: LazyPublisher  # rings the tool worker (gateway.tasks.outbox)
    gateway_id: str
    advertise_url: str | None = None  # where other gateways forward this one's sessions
    draining: bool = False  # stopping (gateway.sessions.drain): it takes no session or turn
    session_lock: SessionLocks = field(default_factory=SessionLocks)
    # Both caches are bounded: an evicted session is claimed or read again on its next request.
    # session id → (tenant, when to claim it again (time.monotonic()), epoch it is owned under)
    _owned: LruDict[str, tuple[str, float, int]] = field(
        default_factory=lambda: LruDict(100_000))
    # The latest turn of each owned session, as the ledger has it: the services keep it in
    # step as they write (they are the only writers while this gateway owns the session), so a
    # request does not read the turn's calls again. Dropped on any error or outside write.
    scopes: LruDict[str, TurnScope] = field(default_factory=lambda: LruDict(10_000))

    def claim(self, session_id: str, tenant: str) -> Claim:
        """Own the tenant's session (idempotent). Raises NotFound for a session of another
        tenant, as if it did not exist, and OwnedElsewhere when a live gateway owns it."""
        known = self._owned.get(session_id)
        if known is not None:
            if known[0] != tenant:
                raise NotFound(f"session {session_id!r} not found")
            if time.monotonic() < known[1]:
                return Claim(known[2])
        # The thread's own connection, which does not wait for the WAL flush: a claim lost to a
        # server crash leaves the older owner and epoch in the ledger, which stays the truth
        # (that owner's held transactions died with the server; this gateway's writes under
        # the lost epoch are refused, and it claims again).
        with self.dbs.autocommit(self.dbs.ledger_url) as conn, conn.begin():  # sends no BEGIN
            row = conn.execute(
                _CLAIM,
                {"me": self.gateway_id, "sid": session_id, "tenant": tenant,
                 "lease": self.settings.owner_lease_s, "draining": self.draining},
            ).first()
        if row is None:
            raise NotFound(f"session {session_id!r} not found")
        if row.epoch is None:  # not ours (any more): forget what we believed of it
            self.lost(session_id)
            if self.draining and row.previous in (None, self.gateway_id):
                raise draining()
            raise OwnedElsewhere(f"session {session_id!r} is owned by gateway {row.previous!r}",
                                 owner=row.previous, owner_url=row.url)
        taken = row.previous not in (None, self.gateway_id)
        # Owned elsewhere since this gateway last knew it (and let go of): what it believed of
        # the session is stale, and the turn is recovered as after a takeover.
        stale = known is not None and known[2] != row.epoch
        if stale:
            self.lost(session_id)
        self._owned[session_id] = (tenant, time.monotonic() + self.settings.owner_recheck_s,
                                   row.epoch)
        return Claim(row.epoch, recover=taken or stale)

    def forget_scope(self, session_id: str) -> None:
        self.scopes.pop(session_id, None)

    def heartbeat(self, presence: bool = False) -> None:
        """Mark this gateway alive; ``presence``: it holds its presence lock now."""
        with self.dbs.ledger.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO gateways (id, host, pid, url, presence, started_at, heartbeat_at)"
                    " VALUES (:id, :host, :pid, :url, :presence, now(), now()) ON CONFLICT (id) "
                    "DO UPDATE SET heartbeat_at = now(), pid = EXCLUDED.pid, url = EXCLUDED.url, "
                    "presence = EXCLUDED.presence"
                ),
                {"id": self.gateway_id, "host": socket.gethostname(), "pid": os.getpid(),
                 "url": self.advertise_url, "presence": presence},
            )

    def disown(self, session_id: str, *, unused_for_s: float | None = None) -> bool:
        """Let the session go (call under its lock): any gateway may claim it next. With
        ``unused_for_s``, only if it had no request for that long. Whether it was let go."""
        idle = "" if unused_for_s is None else (
            " AND owner_seen_at < now() - make_interval(secs => :idle)")
        with self.dbs.ledger.begin() as conn:
            # The epoch moves on: a request of this gateway that claimed the session just before
            # (it waits for the session's lock meanwhile) can then write nothing of it.
            released = conn.execute(text("UPDATE sessions SET owner_id = NULL, epoch = epoch + 1 "
                                         f"WHERE id = :sid AND owner_id = :me{idle}"),
                                    {"sid": session_id, "me": self.gateway_id,
                                     "idle": unused_for_s}).rowcount
        if released:
            self._forget(session_id)
        return bool(released)

    def _forget(self, session_id: str) -> None:
        """Drop what this gateway believed of a session it no longer owns."""
        self._owned.pop(session_id, None)
        self.scopes.pop(session_id, None)

    def lost(self, session_id: str) -> None:
        """The session passed to another gateway: let go of what this one still holds of its
        turn (rolled back, unless prepared: a prepared transaction's fate is its decision) and
        forget what it believed of it."""
        scope = self.scopes.get(session_id)
        if scope is not None:
            self.holds.release(scope.turn.id)
        self._forget(session_id)

    def forget_ownership(self) -> None:
        """Claim every session again on its next request (the presence lock was lost, so
        another gateway may have taken some over meanwhile)."""
        self._owned.clear()
        self.scopes.clear()

    def publish(self, call_ids: Sequence[str]) -> None:
        """Ring the tool worker for calls whose outbox rows have just been committed."""
        self.publisher(call_ids)

    def close(self) -> None:
        self.publisher.close()
        self.settled.stop()
        for turn_id in self.holds.turn_ids():
            hold = self.holds.get(turn_id)
            if hold is not None:
                hold.rollback()
            self.holds.drop(turn_id)
        self.dbs.dispose()

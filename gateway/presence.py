"""Gateway presence: a lock Postgres drops the moment a gateway dies, so its sessions fail over
in about a second instead of after its lease.

Each gateway holds, on a connection of its own, a session-level advisory lock keyed by its id
(``pg_advisory_lock(PRESENCE_CLASS, hashtext(id))``). When the process dies (SIGKILL, a crash,
the machine gone), the kernel closes its sockets, the backend exits and Postgres releases the
lock: the other gateways, which test for it in ``pg_locks`` whenever they claim a session
(``ALIVE``), see the owner dead at once and take its sessions over. A gateway that does not hold
its lock (a brief reconnect, or an app run in process without maintenance) is judged by its
heartbeat alone, as before. The heartbeat lease stays the bound for a gateway that is alive to
Postgres but not answering (paused, partitioned).
"""

from __future__ import annotations

import contextlib
import logging

import psycopg

log = logging.getLogger("specgate.presence")

PRESENCE_CLASS = 0x5E6A  # the first key of every presence lock (the second: hashtext(id))

# SQL: gateway ``g`` (a row of ``gateways``) is alive. Parameter ``:lease`` (seconds).
ALIVE = (
    "(g.heartbeat_at > now() - make_interval(secs => :lease) AND (NOT g.presence OR EXISTS ("
    "SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
    f"AND l.classid = {PRESENCE_CLASS} AND l.objid = hashtext(g.id)::oid AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))))"
)


class PresenceLock:
    """The gateway's presence lock, on a connection of its own (kept by the maintenance loop)."""

    def __init__(self, dsn: str, gateway_id: str) -> None:
        self._dsn = dsn
        self._gateway_id = gateway_id
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def hold(self) -> bool:
        """Whether the lock is held now; (re)connects and takes it when it is not. False when
        it cannot be taken yet (Postgres unreachable, or the previous life of this gateway id
        still holds it until its backend notices the death)."""
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                log.warning("presence lock connection lost; taking the lock again")
                self.release()
        try:
            conn = psycopg.connect(self._dsn, autocommit=True,
                                   application_name=f"specgate presence {self._gateway_id}")
            row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                               (PRESENCE_CLASS, self._gateway_id)).fetchone()
        except psycopg.Error as error:
            log.warning("presence lock not taken: %s", error)
            return False
        if not (row and row[0]):
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):  # a dead connection is closed already
                self._conn.close()
            self._conn = None

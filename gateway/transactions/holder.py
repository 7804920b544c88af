"""Turn transactions: the database connections a turn holds open until it is decided.

A turn's effects on a tool database live in one transaction on a dedicated connection; every
call runs in its own savepoint, named after the call, and the savepoint is kept so that
cancelling the call can roll back to it. A turn that touches several databases holds one
connection per database; each but the ledger's is begun as a two-phase transaction under a
global id that names the turn. How a hold is committed (locally, or by PREPARE, decision,
COMMIT PREPARED) is ``gateway.transactions.twophase``.

The number of held connections is bounded per process; past the bound a new turn transaction is
refused with ``Unavailable`` (429) instead of queueing, because a voice agent would rather fall
back to waiting for the user than stall.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine, TwoPhaseTransaction, exc
from sqlalchemy.orm import Session

from gateway.db import same_database
from gateway.errors import Unavailable
from gateway.transactions.decision import make_gid

log = logging.getLogger("specgate.turns")
T = TypeVar("T")


class ToolSession(Session):
    """The session a tool gets: it joins the transaction the gateway holds and may not end it.

    The gateway brackets every call with its own savepoint, so the session adds none (two
    round trips fewer per call); in exchange ``commit``/``rollback`` from tool code, which
    would end or wipe the whole turn, are refused. ``close`` leaves the transaction as it is.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(bind=conn, join_transaction_mode="rollback_only", autoflush=True)

    def commit(self) -> None:
        raise RuntimeError("a tool must not commit: the gateway commits the turn")

    def rollback(self) -> None:
        raise RuntimeError("a tool must not roll back: raise ToolRetry or ToolFailed instead")


def holder_name(turn_id: str) -> str:
    """The ``application_name`` a turn's held transaction carries while it is open, so the
    gateway that takes the turn's session over can find it and end it (``end_holders``)."""
    return f"specgate hold {turn_id}"


def end_holders(conn: Connection, turn_id: str) -> int:
    """End the backends that still hold the turn's transaction for another gateway, one
    paused or cut off past its lease: their effects are rolled back and their row locks
    freed now, not when the idle timeout ends them. A prepared transaction has no backend
    and is left to its decision. Returns how many were ended."""
    ended = conn.exec_driver_sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %(name)s AND pid <> pg_backend_pid()",
        {"name": holder_name(turn_id)}).scalar()
    return int(ended or 0)


class HeldConnection:
    """One database's part of a turn transaction."""

    def __init__(self, url: str, engine: Engine, *, gid: str | None, lock_timeout_ms: int,
                 idle_timeout_ms: int, name: str = "specgate hold") -> None:
        self.url = url
        self.gid = gid
        self.prepared = False
        try:
            self.conn: Connection = engine.connect()
        except exc.OperationalError as error:
            raise Unavailable(
                f"tool database unavailable: {error.orig}", status_code=503
            ) from error
        self.tx = self.conn.begin_twophase(gid) if gid else self.conn.begin()
        # Postgres itself ends a held transaction the gateway forgot (hung or partitioned);
        # the name (for the transaction only) lets a gateway taking the session over end it.
        self.execute(f"SELECT set_config('lock_timeout', '{int(lock_timeout_ms)}', true), "
                     "set_config('idle_in_transaction_session_timeout', "
                     f"'{int(idle_timeout_ms)}', true), "
                     f"set_config('application_name', '{name}', true)")
        # The statement_timeout in force, when known: set outside any savepoint, so rolling
        # back to a later savepoint keeps it; rolling back to an earlier one may not.
        self.timeout_ms: int | None = None

    def execute(self, statement: str) -> None:
        """A parameterless statement (or several, ``;``-separated) straight to the driver."""
        driver = self.conn.connection.driver_connection
        assert driver is not None
        driver.execute(statement)  # type: ignore[union-attr]

    def prepare(self) -> None:
        """PREPARE TRANSACTION under ``gid``; the connection is discarded when closed."""
        assert self.gid is not None
        # PREPARE in a failed transaction silently does nothing: this raises instead.
        self.execute("SELECT 1")
        if isinstance(self.tx, TwoPhaseTransaction):
            self.tx.prepare()
        else:  # begun as a local transaction: only commit or PREPARE can end it now
            self.execute(f"PREPARE TRANSACTION '{self.gid}'")
        self.prepared = True

    def close(self) -> None:
        if self.prepared:
            # Closing would roll the prepared transaction back; its fate belongs to the ledger.
            self.conn.invalidate()
        self.conn.close()


@dataclass
class _Entry:
    """A call that ran in the turn transaction; ``kept`` when its effect is still applied."""

    call_id: str
    url: str
    savepoint: str
    kept: bool


@dataclass
class TurnHold:
    """Everything one turn holds open, in the order the calls ran in it."""

    turn_id: str
    gid_prefix: str
    lock_timeout_ms: int
    idle_timeout_ms: int
    release: Callable[[int], None]
    connections: dict[str, HeldConnection] = field(default_factory=dict)
    entries: list[_Entry] = field(default_factory=list)
    # When a request last touched it: a turn left idle past SPECGATE_TURN_IDLE_S is cancelled.
    last_used: float = field(default_factory=time.monotonic)

    def idle_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_used > seconds

    def connection(self, url: str, engine: Engine, ledger_url: str,
                   acquire: Callable[[], None]) -> HeldConnection:
        self.last_used = time.monotonic()
        held = self.connections.get(url)
        if held is None:
            acquire()
            local = same_database(url, ledger_url)
            gid = None if local else make_gid(self.gid_prefix, self.turn_id)
            try:
                held = HeldConnection(url, engine, gid=gid, lock_timeout_ms=self.lock_timeout_ms,
                                      idle_timeout_ms=self.idle_timeout_ms,
                                      name=holder_name(self.turn_id))
            except BaseException:
                self.release(1)
                raise
            self.connections[url] = held
        return held

    def run(self, held: HeldConnection, call_id: str, fn: Callable[[Session], T], *,
            keep: bool, timeout_s: float) -> T:
        """Run ``fn`` in a savepoint named after the call; keep the effect or roll it back."""
        savepoint = f"sp_{call_id}"
        timeout_ms = int(timeout_s * 1000)
        setting = "" if held.timeout_ms == timeout_ms else (
            f"SET LOCAL statement_timeout = {timeout_ms}; ")
        held.execute(f'{setting}SAVEPOINT "{savepoint}"')  # one statement per call, mostly
        held.timeout_ms = timeout_ms
        session = ToolSession(held.conn)
        try:
            value = fn(session)
            session.flush()
        except BaseException:
            session.close()
            held.execute(f'ROLLBACK TO SAVEPOINT "{savepoint}"')
            raise
        session.close()
        if not keep:
            held.execute(f'ROLLBACK TO SAVEPOINT "{savepoint}"')
        self.entries.append(_Entry(call_id, held.url, savepoint, keep))
        self.last_used = time.monotonic()
        return value

    def undo(self, call_id: str) -> list[str]:
        """Roll back to the call's savepoint. Returns the ids of the calls that ran after it in
        the same transaction: their effects are gone too, and what they read may have changed,
        so the caller replays them in order."""
        index = next((i for i, e in enumerate(self.entries) if e.call_id == call_id), None)
        if index is None:
            return []
        target = self.entries[index]
        if target.kept:
            held = self.connections[target.url]
            held.execute(f'ROLLBACK TO SAVEPOINT "{target.savepoint}"')
            held.timeout_ms = None  # a later call's setting may be undone with it
        later = [e for e in self.entries[index + 1:] if e.url == target.url]
        removed = [target, *later] if target.kept else [target]
        self.entries = [e for e in self.entries if e not in removed]
        return [e.call_id for e in later] if target.kept else []

    def has_effect(self, call_id: str) -> bool:
        return any(e.call_id == call_id and e.kept for e in self.entries)

    def rollback(self) -> None:
        for held in self.connections.values():
            try:
                if held.prepared:
                    held.execute(f"ROLLBACK PREPARED '{held.gid}'")
                    held.prepared = False
                elif held.tx.is_active:
                    held.tx.rollback()
            except exc.OperationalError as error:  # the connection is gone, and with it
                # the transaction (a gateway that took the session over may have ended it)
                log.warning("turn %r: its held connection is gone (%s); discarded",
                            self.turn_id, error.orig)
                held.conn.invalidate()
            except exc.DBAPIError:
                log.exception("rollback of turn %r failed; the connection is discarded",
                              self.turn_id)
                held.conn.invalidate()

    def close(self) -> None:
        for held in self.connections.values():
            held.close()
        self.release(len(self.connections))
        self.connections.clear()
        self.entries.clear()


class HeldTurns:
    """The turn holds of this process, with the bound on held connections."""

    def __init__(self, bound: int, gid_prefix: str, lock_timeout_ms: int,
                 idle_timeout_ms: int) -> None:
        self.bound = bound
        self.gid_prefix = gid_prefix
        self.lock_timeout_ms = lock_timeout_ms
        self.idle_timeout_ms = idle_timeout_ms
        self._holds: dict[str, TurnHold] = {}
        self._count = 0
        self._lock = threading.Lock()

    @property
    def held_connections(self) -> int:
        return self._count

    def acquire(self) -> None:
        with self._lock:
            if self._count >= self.bound:
                raise Unavailable(
                    f"all {self.bound} turn transactions of this gateway are held; "
                    "commit or cancel open turns, or retry later",
                    code="held_transactions_exhausted",
                    bound=self.bound,
                )
            self._count += 1

    def _release(self, n: int) -> None:
        with self._lock:
            self._count -= n

    def get(self, turn_id: str) -> TurnHold | None:
        return self._holds.get(turn_id)

    def get_or_create(self, turn_id: str) -> TurnHold:
        hold = self._holds.get(turn_id)
        if hold is None:
            hold = TurnHold(turn_id, self.gid_prefix, self.lock_timeout_ms,
                            self.idle_timeout_ms, self._release)
            self._holds[turn_id] = hold
        return hold

    def release(self, turn_id: str) -> None:
        """Roll back and let go of what this process holds of a turn the ledger decided
        without it (nothing prepared is touched: a prepared transaction's fate is its
        decision, which recovery carries out)."""
        hold = self._holds.get(turn_id)
        if hold is None:
            return
        if not any(held.prepared for held in hold.connections.values()):
            hold.rollback()
        self.drop(turn_id)

    def drop(self, turn_id: str) -> None:
        hold = self._holds.pop(turn_id, None)
        if hold is not None:
            hold.close()

    def touch(self, turn_id: str) -> None:
        """A request for the turn's session arrived: the turn is not abandoned."""
        hold = self._holds.get(turn_id)
        if hold is not None:
            hold.last_used = time.monotonic()

    def idle(self, seconds: float) -> list[str]:
        """The turns holding a transaction with no request for longer than ``seconds``."""
        return [t for t, hold in list(self._holds.items())
                if hold.connections and hold.idle_for(seconds)]

    def turn_ids(self) -> list[str]:
        return list(self._holds)



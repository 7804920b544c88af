"""Database plumbing: where the ledger lives and how tool databases are reached.

The ledger engine is an ordinary pool of short transactions. Tool engines hand out the
connections that turn transactions hold; those are checked out for the life of a turn and are
bounded by ``max_held_transactions`` (see ``gateway.transactions.holder``), so the pool size follows
that bound rather than request concurrency. Each thread also keeps an autocommit connection of
its own to the ledger's database: a call's ledger writes go there, and so does the read-only
transaction of a tool whose database is the ledger's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway.config import Settings


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def resolve_database_url(settings: Settings, database: str = "specgate") -> str:
    """The ledger URL: configured, or the embedded Postgres started on demand."""
    if settings.database_url is not None:
        return settings.database_url
    from gateway.embedded import embedded_database_url

    return embedded_database_url(settings.home.resolve(), database)


def make_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> Engine:
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=kwargs.pop("max_overflow", 10),
        pool_pre_ping=False,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        **kwargs,
    )


def driver(conn: Connection | psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The driver connection under a SQLAlchemy connection (or the driver connection given)."""
    if isinstance(conn, psycopg.Connection):
        return conn
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def same_database(url_a: str, url_b: str) -> bool:
    """True when two URLs reach the same database, so one local transaction can span both."""
    a, b = make_url(url_a), make_url(url_b)
    return (a.host, a.port or 5432, a.database, a.query.get("host")) == (
        b.host,
        b.port or 5432,
        b.database,
        b.query.get("host"),
    )


class Databases:
    """The engines of one process: the ledger and one per tool database URL."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger_url = resolve_database_url(settings)
        self.ledger = make_engine(self.ledger_url, pool_size=20, max_overflow=20)
        self._tool_engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._own_conns: list[Connection] = []
        # One connection per thread, opened on first use and kept: no pool to check out from.
        # The dialect must never roll back on its own: psycopg's ``rollback()`` also forgets
        # the connection's prepared statements, the hot ledger writes among them.
        self._own_engine = create_engine(
            self.ledger_url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True, json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"options": "-c synchronous_commit=off"})
        self.driver_dsn = make_url(self.ledger_url).set(drivername="postgresql").render_as_string(
            hide_password=False)

    def _own(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._own_engine.connect()
            self._local.conn = conn
            with self._lock:  # for dispose(); a thread's dropped one is forgotten here
                self._own_conns = [c for c in self._own_conns if not c.closed] + [conn]
        return conn

    def _drop_own(self, conn: Connection) -> None:
        conn.invalidate()
        conn.close()
        self._local.conn = None

    @contextmanager
    def fast(self) -> Iterator[psycopg.Connection[Any]]:
        """This thread's own autocommit connection to the ledger, for the one-statement writes
        of every call (no pool checkout on the hot path). Dropped after a connection error.

        Its writes do not wait for the WAL flush (``synchronous_commit=off``): they are the
        states of still-open turns, which a server crash voids anyway, and every decision
        written later through ``ledger`` flushes the WAL up to and past them."""
        conn = self._own()
        try:
            yield driver(conn)
        except psycopg.OperationalError:
            self._drop_own(conn)
            raise

    @contextmanager
    def autocommit(self, url: str) -> Iterator[Connection]:
        """A connection to ``url`` in autocommit mode, for a transaction its user begins and
        ends on the driver. On the ledger's database it is this thread's own (``fast``'s), so
        a read costs no pool checkout; elsewhere a pooled one. Its user must leave no
        transaction open."""
        if url != self.ledger_url:
            with self.engine_for(url).connect() as pooled:
                yield pooled.execution_options(isolation_level="AUTOCOMMIT")
            return
        conn = self._own()
        try:
            yield conn
        finally:
            # Its next user would write the ledger inside whatever is left open: a connection
            # not back to idle (an interrupted rollback, a broken link) is not reused.
            if (conn.invalidated
                    or driver(conn).info.transaction_status != TransactionStatus.IDLE):
                self._drop_own(conn)

    def tool_url(self, adapter: str) -> str:
        return self.settings.tool_database_urls.get(adapter, self.ledger_url)

    def all_urls(self) -> set[str]:
        """The ledger's database and every tool database: where our prepared transactions live."""
        return {self.ledger_url, *self.settings.tool_database_urls.values()}

    def tool_engine(self, adapter: str) -> Engine:
        return self.engine_for(self.tool_url(adapter))

    def engine_for(self, url: str) -> Engine:
        """The pool of turn transactions (and the reconciler) on one database URL."""
        with self._lock:
            engine = self._tool_engines.get(url)
            if engine is None:
                bound = self.settings.max_held_transactions
                engine = make_engine(url, pool_size=bound + 4, max_overflow=8)
                self._tool_engines[url] = engine
            return engine

    def dispose(self) -> None:
        self.ledger.dispose()
        for conn in self._own_conns:
            conn.close()
        self._own_engine.dispose()
        for engine in self._tool_engines.values():
            engine.dispose()

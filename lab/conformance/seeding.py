"""A fresh copy of a τ² domain per task, cheap enough for hundreds of tasks on one gateway.

τ²'s ``db.json`` is loaded once into the adapter's own tables (through the adapter's
``tau2data.load_tau2_db``) and copied into unlogged snapshot tables in the schema
``specgate_tau2``. Each task then starts with one transaction that refills, from the snapshot,
the tables the previous task changed (``TRUNCATE`` + ``INSERT … SELECT``), so the gateway keeps
running and its connections stay valid. Which tables changed is read from Postgres itself
(row versions written after the refill carry a newer ``xmin``; a delete lowers the count), so
no trigger is installed on the adapter's tables. Foreign-key triggers are skipped during the
refill when the role may (``session_replication_role = replica``): the snapshot is consistent
by construction, and checking it row by row costs more than copying it.

The snapshot is rebuilt only when its key changes: a digest of τ²'s seed file, the domain
tables' DDL and the adapter's source (its loader may use any of its modules: editing the
adapter costs one reload, a stale snapshot would cost a wrong verdict). The key row is unlogged
like the snapshot, so a crashed server, which empties unlogged tables, also forgets the key.

One harness at a time per database: two would refill each other's tables mid-task.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Engine, Table, create_engine, exc, text
from sqlalchemy.schema import CreateTable

from lab.conformance import reference

SCHEMA = "specgate_tau2"
RESET_LOCK_TIMEOUT_MS = 5000


class Tau2Data(Protocol):
    """What an adapter's ``tau2data`` module provides (the adapters' contract)."""

    def load_tau2_db(self, conn: Connection, data: Any) -> None: ...

    def export_tau2_db(self, conn: Connection) -> dict[str, Any]: ...


def tau2data(domain: str) -> Tau2Data:
    """The adapter's ``tau2data`` module (``ImportError`` when the adapter is not there)."""
    return cast(Tau2Data, importlib.import_module(f"tool_adapters.{domain}.tau2data"))


@dataclass(frozen=True, slots=True)
class SeedInfo:
    loaded: bool  # False: the snapshot already matched the key
    load_s: float


def _may_skip_fk_checks(engine: Engine) -> bool:
    """Whether this role may turn off foreign-key triggers (superusers, or granted)."""
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
    except exc.DBAPIError:
        return False
    return True


class Seeder:
    """Loads, snapshots, resets and exports one domain's tables on the adapter's database."""

    def __init__(self, domain: str, url: str) -> None:
        from gateway.tools.registry import load_adapter

        metadata = load_adapter(domain).metadata
        if metadata is None:
            raise RuntimeError(f"adapter {domain!r} declares no tables")
        self.domain = domain
        self.tables: tuple[Table, ...] = tuple(metadata.sorted_tables)
        self.data = tau2data(domain)
        self.engine: Engine = create_engine(url, pool_size=1, max_overflow=1)
        self._children: dict[str, set[str]] = {}
        for table in self.tables:
            for key in table.foreign_keys:
                self._children.setdefault(key.column.table.name, set()).add(table.name)
        self._skip_fk_checks = _may_skip_fk_checks(self.engine)
        self._counts: dict[str, int] = {}  # rows per snapshot table
        self._refilled: dict[str, str] = {}  # table → id of the transaction that refilled it

    def close(self) -> None:
        self.engine.dispose()

    def key(self) -> str:
        """What the snapshot was made from; any change forces a reload."""
        digest = hashlib.sha256(reference.seed_json(self.domain).encode())
        for table in self.tables:
            digest.update(str(CreateTable(table).compile(dialect=self.engine.dialect)).encode())
        package = Path(inspect.getfile(cast(ModuleType, self.data))).parent
        for source in sorted(package.glob("*.py")):
            digest.update(source.name.encode() + source.read_bytes())
        return digest.hexdigest()

    def prepare(self) -> SeedInfo:
        """Make sure the snapshot holds τ²'s seed as the adapter loads it (reload if stale)."""
        started = time.perf_counter()
        key = self.key()
        with self.engine.begin() as conn:
            # One preparer at a time per database (the schema is shared by the domains).
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": SCHEMA})
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; "
                                 f"CREATE UNLOGGED TABLE IF NOT EXISTS {SCHEMA}.seeds "
                                 "(domain text PRIMARY KEY, key text NOT NULL, "
                                 "loaded_at timestamptz NOT NULL DEFAULT now())")
            stored = conn.execute(text(f"SELECT key FROM {SCHEMA}.seeds WHERE domain = :d"),
                                  {"d": self.domain}).scalar()
            if stored == key:
                self._count_snapshot(conn)
                return SeedInfo(False, time.perf_counter() - started)
            conn.exec_driver_sql(f"TRUNCATE {self._names()} RESTART IDENTITY")
            self.data.load_tau2_db(conn, reference.seed_data(self.domain))
            for table in self.tables:
                snapshot = self._snapshot_name(table)
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {snapshot}; CREATE UNLOGGED TABLE "
                                     f"{snapshot} AS SELECT * FROM {self._name(table)}")
            conn.execute(text(f"INSERT INTO {SCHEMA}.seeds (domain, key) VALUES (:d, :k) "
                              "ON CONFLICT (domain) DO UPDATE SET key = EXCLUDED.key, "
                              "loaded_at = now()"), {"d": self.domain, "k": key})
            self._count_snapshot(conn)
        return SeedInfo(True, time.perf_counter() - started)

    def _count_snapshot(self, conn: Connection) -> None:
        counts = " UNION ALL ".join(f"SELECT '{t.name}', count(*) FROM {self._snapshot_name(t)}"
                                    for t in self.tables)
        self._counts = {name: int(n) for name, n in conn.exec_driver_sql(counts).all()}
        self._refilled.clear()  # the live tables are not known to match it any more

    def reset(self) -> float:
        """Put the domain's tables back to the snapshot; returns the seconds it took. Only
        tables a task changed are refilled (with the tables that reference them)."""
        started = time.perf_counter()
        with self.engine.begin() as conn:
            stale = self._with_children(self._changed(conn))
            if stale:
                conn.exec_driver_sql(self._refill_sql(stale))
                xid = conn.exec_driver_sql(
                    "SELECT mod(pg_current_xact_id()::text::bigint, 4294967296)::text").scalar()
                self._refilled.update(dict.fromkeys(stale, str(xid)))
        return time.perf_counter() - started

    def _changed(self, conn: Connection) -> set[str]:
        """Tables written since this seeder last refilled them. Every row version a later
        transaction writes carries that transaction's id in ``xmin``, and a delete lowers the
        count, so a table whose rows all still carry the refill's id is untouched. A table not
        refilled by this seeder yet counts as changed."""
        unknown = {t.name for t in self.tables if t.name not in self._refilled}
        checks = [f"SELECT '{t.name}', count(*) <> {self._counts[t.name]} OR "
                  f"coalesce(bool_or(xmin::text <> '{self._refilled[t.name]}'), false) "
                  f"FROM {self._name(t)}"
                  for t in self.tables if t.name in self._refilled]
        if not checks:
            return unknown
        rows = conn.exec_driver_sql(" UNION ALL ".join(checks)).all()
        return unknown | {name for name, changed in rows if changed}

    def _with_children(self, names: set[str]) -> set[str]:
        """``names`` and every table referencing one of them: TRUNCATE needs them together."""
        found, todo = set(names), list(names)
        while todo:
            for child in self._children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def export(self) -> dict[str, Any]:
        """The tables as τ²'s ``db.json`` dict, read in one repeatable-read snapshot."""
        with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            data = self.data.export_tau2_db(conn)
            conn.rollback()
        return data

    def db_hash(self) -> str:
        """τ²'s own hash of the tables' current state."""
        return reference.db_hash(self.domain, self.export())

    def _name(self, table: Table) -> str:
        return self.engine.dialect.identifier_preparer.format_table(table)

    def _names(self) -> str:
        return ", ".join(self._name(t) for t in self.tables)

    def _snapshot_name(self, table: Table) -> str:
        quote = self.engine.dialect.identifier_preparer.quote
        return f"{SCHEMA}.{quote(table.name)}"

    def _refill_sql(self, names: set[str]) -> str:
        quote = self.engine.dialect.identifier_preparer.quote
        chosen = [t for t in self.tables if t.name in names]  # parents before children
        statements = [f"SET LOCAL lock_timeout = {RESET_LOCK_TIMEOUT_MS}"]
        if self._skip_fk_checks:  # the snapshot is consistent; checking it row by row is slow
            statements.append("SET LOCAL session_replication_role = replica")
        statements.append(f"TRUNCATE {', '.join(self._name(t) for t in chosen)} "
                          "RESTART IDENTITY")
        for table in chosen:
            columns = ", ".join(quote(c.name) for c in table.columns)
            statements.append(f"INSERT INTO {self._name(table)} ({columns}) "
                              f"SELECT {columns} FROM {self._snapshot_name(table)}")
        return "; ".join(statements)

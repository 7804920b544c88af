"""The scale benchmark's own Postgres, and what its server processes use.

Why its own server: the figures are per turn of the benchmark, so nothing else may run
statements or burn CPU on it, and ``pg_stat_statements`` must be loaded at start-up
(``shared_preload_libraries``), which neither a shared server nor the embedded one
(``gateway.embedded``, whose build ships no such module) can promise. So the benchmark starts a
private cluster from the machine's PostgreSQL binaries (Debian's ``/usr/lib/postgresql/<v>/bin``
or ``pg_config --bindir``), fresh in ``<home>/postgres`` on every run (figures must not depend on
what an earlier run left in the tables), listening on a free port of 127.0.0.1 only, with trust
authentication. It is stopped when the benchmark ends, Ctrl-C included.

Without those binaries it falls back to the embedded Postgres under ``<home>`` and says that it
has no statement counts; CPU, memory and lock waits are still measured.

Server CPU is read from the process tree: the postmaster's own time, the time of every live
backend, and the time of backends that have exited (the kernel adds a reaped child's time to
its parent's ``children_*`` times). A connection that comes and goes within a phase is so still
counted.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from lab.servers import free_port

DATABASE = "specgate"
"""The database the gateways use; statements and lock waits are counted in it alone."""
ADMIN_DATABASE = "postgres"
"""Where the benchmark's own sampling connections live, so their statements are not counted."""
SUPERUSER = "postgres"
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP only: no socket directory to own or clean up
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track": "top",  # statements the gateways sent, not those inside them
    "pg_stat_statements.max": "10000",
    "max_connections": "400",  # as the embedded one: 3 gateways' pools and held turns
    "max_prepared_transactions": "64",  # as the embedded one (two-phase commit, if configured)
}
RUN_AS = "postgres"
"""Postgres refuses to run as root; as root, the cluster runs as this system user."""


def find_binaries() -> Path | None:
    """The newest PostgreSQL ``bin`` directory that has ``initdb`` and whose server has the
    ``pg_stat_statements`` module, or None."""
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    candidates.sort(key=lambda path: _version_key(path.parent.name), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with suppress(OSError, subprocess.CalledProcessError):
            candidates.append(Path(subprocess.run([pg_config, "--bindir"], capture_output=True,
                                                  text=True, check=True).stdout.strip()))
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists() \
                and _has_pg_stat_statements(candidate):
            return candidate
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _has_pg_stat_statements(bindir: Path) -> bool:
    libdirs = [bindir.parent / "lib", bindir.parent / "lib" / "postgresql"]
    own_config = bindir / "pg_config"
    if own_config.exists():
        with suppress(OSError, subprocess.CalledProcessError):
            libdirs.insert(0, Path(subprocess.run([str(own_config), "--pkglibdir"],
                                                  capture_output=True, text=True,
                                                  check=True).stdout.strip()))
    return any((libdir / "pg_stat_statements.so").exists() for libdir in libdirs)


@dataclass
class BenchPostgres:
    """A running server of the benchmark: where to connect, and its process tree."""

    url: str
    """SQLAlchemy URL of ``DATABASE`` (what the gateways get)."""
    admin_conninfo: str
    """libpq connection string of ``ADMIN_DATABASE``, for the benchmark's own queries."""
    data_dir: Path
    statements: bool
    """``pg_stat_statements`` is loaded and created in ``ADMIN_DATABASE``."""
    kind: str

    def postmaster(self) -> psutil.Process:
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        """The postmaster and its children (backends, checkpointer, walwriter…)."""
        postmaster = self.postmaster()
        return [postmaster, *postmaster.children()]

    def cpu_seconds(self) -> float:
        """CPU time used by the server so far, exited backends included (see the module)."""
        postmaster = self.postmaster()
        own = postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in postmaster.children():
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue  # exited meanwhile: in the postmaster's children_* from now on
            total += times.user + times.system
        return float(total)

    def memory(self) -> Memory:
        """USS and PSS of every server process, summed, and how many there are."""
        uss = pss = 0
        count = 0
        for process in self.processes():
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            uss += info.uss
            pss += getattr(info, "pss", 0)
            count += 1
        return Memory(uss_bytes=uss, pss_bytes=pss, processes=count)

    def version(self) -> str:
        with psycopg.connect(self.admin_conninfo) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


@dataclass(frozen=True)
class Memory:
    uss_bytes: int
    pss_bytes: int
    processes: int


def process_cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, its reaped children's included."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


@contextmanager
def bench_postgres(home: Path) -> Iterator[BenchPostgres]:
    """The benchmark's server (see the module), running until the block ends."""
    bindir = find_binaries()
    if bindir is None:
        with _embedded(home) as server:
            yield server
        return
    with _private(bindir, home) as server:
        yield server


@contextmanager
def _private(bindir: Path, home: Path) -> Iterator[BenchPostgres]:
    root = (home / "postgres").resolve()
    data_dir, log = root / "data", root / "server.log"
    user = _system_user()
    _stop_leftover(bindir, data_dir, user)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    if user is not None:
        _let_traverse(root, user)
        os.chown(root, user.pw_uid, user.pw_gid)
    _run(bindir / "initdb", user, "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust",
         "--encoding=UTF8", "--no-sync")
    port = free_port()
    with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# specgate bench scale (lab/bench/pgcluster.py)\n")
        conf.writelines(f"{key} = {value}\n" for key, value in
                        {"port": str(port), **SERVER_SETTINGS}.items())
    try:
        _run(bindir / "pg_ctl", user, "-D", str(data_dir), "-l", str(log), "-w", "-t", "60",
             "start")
        conninfo = f"host=127.0.0.1 port={port} user={SUPERUSER} dbname={ADMIN_DATABASE}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield BenchPostgres(
            url=f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}",
            admin_conninfo=conninfo, data_dir=data_dir, statements=True,
            kind="private cluster with pg_stat_statements")
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"the benchmark's Postgres did not start: {error}\n"
                           f"{_tail(log)}") from error
    finally:
        _stop(bindir, data_dir, user)


def _system_user() -> pwd.struct_passwd | None:
    """None when not root (the cluster runs as the caller), else ``RUN_AS``."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError as error:
        raise RuntimeError(f"Postgres cannot run as root and there is no {RUN_AS!r} user to "
                           "run it as; run the benchmark as another user") from error


def _let_traverse(path: Path, user: pwd.struct_passwd) -> None:
    """As root, let ``user`` reach the cluster's directory: add the traverse bit (o+x, no
    read) to each parent that lacks it, as the embedded Postgres does for its own."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _run(binary: Path, user: pwd.struct_passwd | None, *args: str) -> None:
    kwargs: dict[str, object] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    subprocess.run([str(binary), *args], check=True, capture_output=True, text=True, cwd="/",
                   **kwargs)  # type: ignore[call-overload]


def _stop(bindir: Path, data_dir: Path, user: pwd.struct_passwd | None) -> None:
    """``pg_ctl stop -m fast``; the postmaster is killed if that fails."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        _run(bindir / "pg_ctl", user, "-D", str(data_dir), "-m", "fast", "-w", "-t", "30",
             "stop")
    except subprocess.CalledProcessError:
        _kill_postmaster(pid_file)


def _stop_leftover(bindir: Path, data_dir: Path, user: pwd.struct_passwd | None) -> None:
    """A run killed before its clean-up may have left its server running on the data dir."""
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists() and _live_postmaster(pid_file) is not None:
        _stop(bindir, data_dir, user)


def _live_postmaster(pid_file: Path) -> psutil.Process | None:
    """The process named in ``postmaster.pid`` if it is a postgres server on this data dir
    (not a recycled pid)."""
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        if process.name() in ("postgres", "postmaster") and \
                str(pid_file.parent) in " ".join(process.cmdline()):
            return process
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None


def _kill_postmaster(pid_file: Path) -> None:
    process = _live_postmaster(pid_file)
    if process is None:
        return
    process.terminate()
    try:
        process.wait(10)
    except psutil.TimeoutExpired:
        process.kill()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@contextmanager
def _embedded(home: Path) -> Iterator[BenchPostgres]:
    """The embedded Postgres under ``home`` (no pg_stat_statements), stopped at the end."""
    from sqlalchemy.engine import make_url

    from gateway.embedded import embedded_database_url, stop_embedded

    home = home.resolve()
    try:
        url = embedded_database_url(home, DATABASE)
        socket_dir = str(make_url(url).query["host"])
        conninfo = f"host={socket_dir} user={SUPERUSER} dbname={ADMIN_DATABASE}"
        yield BenchPostgres(url=url, admin_conninfo=conninfo, data_dir=home / "pg",
                            statements=False,
                            kind="embedded (no PostgreSQL binaries with pg_stat_statements "
                                 "found)")
    finally:
        stop_embedded(home)

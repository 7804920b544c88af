"""Child processes of the ``specgate`` command: the tool worker that ``specgate serve`` starts
beside the gateway, and the base the lab's local gateways build on.

A child is ``python -m specgate worker`` (or ``serve``) with the given environment: the same code
path as production, and killable with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from gateway.config import Settings


def settings_env(settings: Settings, ledger_url: str | None = None) -> dict[str, str]:
    """Environment that gives a child process exactly these settings (with the ledger URL
    already resolved, so it does not start or migrate anything itself, and an absolute home)."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"SPECGATE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["SPECGATE_HOME"] = str(settings.home.resolve())
    if ledger_url is not None:
        env["SPECGATE_DATABASE_URL"] = ledger_url
    return env


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C (``SystemExit``), so a parent's ``finally`` blocks and
    context managers stop its child processes instead of leaving them orphaned."""
    signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class ChildProcess:
    """A ``python -m specgate …`` child: started until ready, or stopped again if its start fails
    or is interrupted, so no caller ever holds a half-started child it does not know of."""

    env: dict[str, str]
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    what = "child"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 60.0) -> Self:
        try:
            self._spawn(*self._command())
            self._wait_until(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, *args: str) -> None:
        log: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.process = subprocess.Popen([sys.executable, "-m", "specgate", *args],
                                        env={**os.environ, **self.env}, stdout=log, stderr=log)

    def _wait_until(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.process.returncode} at start; "
                                   f"log: {self.log_path}")
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.what} was not ready within {timeout_s} s; "
                           f"log: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalWorker(ChildProcess):
    """``specgate worker``; ready once it has connected to the broker (it touches a file)."""

    ready_file: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="specgate-worker-")) / "ready")
    what = "worker"

    def _command(self) -> list[str]:
        self.ready_file.unlink(missing_ok=True)
        return ["worker", "--ready-file", str(self.ready_file)]

    def _ready(self) -> bool:
        return self.ready_file.exists()

"""``specgate worker``: the Celery tool worker, its outbox relay and the adapters' periodic jobs.

One process: Celery consumes call ids on a thread pool (tools mostly wait on the network), and
a housekeeping thread relays the outbox and runs the adapters' periodic jobs (e.g. sending mail
that was scheduled for now). Several workers may run at once: every piece of work is claimed
with a row lock, so they share it without coordination.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from gateway.calls.execution import CallIdentity
from gateway.config import Settings
from gateway.db import Databases
from gateway.tasks import outbox
from gateway.tasks.celery_app import PLAIN_TASK_NAME, QUEUE, TASK_NAME, make_celery
from gateway.tasks.runner import WorkerContext, invoke, process
from gateway.tools.registry import load_registry

log = logging.getLogger("specgate.worker")


def build(settings: Settings) -> tuple[Celery, WorkerContext]:
    """The Celery app with the worker's tasks registered, and their shared context."""
    dbs = Databases(settings)
    celery = make_celery(settings, dbs.ledger_url)
    w = WorkerContext(settings=settings, dbs=dbs, registry=load_registry(settings.adapters),
                      publish=lambda ids: outbox.publish(celery, ids))

    @celery.task(name=TASK_NAME, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def call(call_id: str) -> str:
        outcome = process(w, call_id)
        log.info("call %s: %s", call_id, outcome)
        return outcome

    @celery.task(name=PLAIN_TASK_NAME, ignore_result=False)  # type: ignore[untyped-decorator]
    def plain_tool(tool_name: str, arguments: dict[str, Any]) -> Any:
        """A tool function run the plain Celery way, with no ledger: the benchmark's baseline."""
        tool = w.registry.get(tool_name)
        return invoke(w, tool, lambda ctx: tool.spec.invoke(ctx, arguments),
                      CallIdentity("plain", "plain", "plain", "plain", "plain"))

    return celery, w


def worker_beat(ledger: Engine, worker_id: str | None = None) -> None:
    """Record that a tool worker is alive: its housekeeping loop calls this every pass, the
    dashboard's health panel reads it."""
    with ledger.begin() as conn:
        conn.execute(text(
            "INSERT INTO worker_heartbeats (id, host, pid, started_at, heartbeat_at) "
            "VALUES (:id, :host, :pid, now(), now()) ON CONFLICT (id) DO UPDATE "
            "SET heartbeat_at = now(), pid = EXCLUDED.pid"),
            {"id": worker_id or f"{socket.gethostname()}:{os.getpid()}",
             "host": socket.gethostname(), "pid": os.getpid()})


class Housekeeping:
    """The relay and the adapters' periodic jobs, every ``relay_period_s`` on a daemon thread."""

    def __init__(self, celery: Celery, w: WorkerContext) -> None:
        self.celery = celery
        self.w = w
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="specgate-housekeeping",
                                        daemon=True)

    def start(self) -> Housekeeping:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self) -> None:
        try:
            worker_beat(self.w.dbs.ledger)
        except Exception:
            log.exception("worker heartbeat failed; retrying next period")
        try:
            outbox.relay_pass(self.w.dbs.ledger, self.celery, self.w.settings)
        except Exception:
            log.exception("outbox relay pass failed; retrying next period")
        for name, adapter in self.w.registry.adapters.items():
            for job in adapter.periodic:
                try:
                    with Session(bind=self.w.dbs.tool_engine(name)) as session:
                        job(session, self.w.settings.adapter_settings.get(name, {}))
                        session.commit()
                except Exception:
                    log.exception("periodic job %r of adapter %r failed", job, name)

    def _loop(self) -> None:
        while not self._stop.wait(self.w.settings.relay_period_s):
            self.run_once()


def run_worker(settings: Settings, *, concurrency: int | None = None,
               loglevel: str = "WARNING", ready_file: Path | None = None) -> None:
    """Run the worker in this process until it is stopped (SIGTERM/SIGINT). ``ready_file`` is
    created once the worker consumes (for whoever started it)."""
    celery, w = build(settings)
    housekeeping = Housekeeping(celery, w).start()

    def ready(**_: object) -> None:
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()

    stopping = threading.Event()
    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(lambda **_: stopping.set(), weak=False)
    try:
        while True:
            worker = celery.Worker(pool="threads", concurrency=concurrency or
                                   settings.worker_concurrency, queues=[QUEUE],
                                   loglevel=loglevel, without_mingle=True, without_gossip=True,
                                   without_heartbeat=True)
            worker.start()
            if stopping.is_set():
                break
            # Celery gives up when the broker keeps refusing ("frequent restarts"); a worker
            # that nobody restarts would leave the outbox unserved, so start it again.
            log.warning("the worker stopped without being asked to (broker unreachable?); "
                        "starting it again in 1 s")
            time.sleep(1.0)
    finally:
        housekeeping.stop()
        w.dbs.dispose()

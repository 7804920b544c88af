"""The outbox: durable work for the tool worker, and the relay that rings the broker for it.

Rows are written by ``enqueue`` in the transaction that decides the work (a task call issued, a
turn committed, a held effect to undo). Publishing happens only after that transaction commits —
at once by the writer (the fast path) and again by the relay for every row that is not done and
that no worker holds locked, with doubling delays (``relay_grace_s`` … ``relay_max_backoff_s``).
A broker that is down therefore delays work and loses none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from gateway.config import Settings
from gateway.db import driver

if TYPE_CHECKING:  # Celery loads on first publish: a gateway of db tools never needs it
    from celery import Celery

    from gateway.ledger.transitions import LedgerConn

log = logging.getLogger("specgate.outbox")

RUN, COMPENSATE = "run", "compensate"  # what an outbox row asks of the tool worker


_ENQUEUE = ("INSERT INTO outbox (call_id, kind, payload, attempts, sends, next_at) "
            "VALUES (%(call_id)s, %(kind)s, '{}'::jsonb, 0, 1, "
            "now() + make_interval(secs => %(grace)s))")


def enqueue(conn: LedgerConn, call_ids: Sequence[str], kind: str, grace_s: float) -> None:
    """Outbox rows for the tool worker, in the caller's transaction. They count as sent once:
    the writer publishes them after its commit, and the relay sends them again only after
    ``grace_s`` (``relay_pass``)."""
    if call_ids:
        driver(conn).cursor().executemany(
            _ENQUEUE, [{"call_id": c, "kind": kind, "grace": grace_s} for c in call_ids])


_DUE = text(
    """
    WITH due AS (
        SELECT id FROM outbox WHERE done_at IS NULL AND next_at <= now()
         ORDER BY next_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    UPDATE outbox o SET sends = o.sends + 1, dispatched_at = now(),
           next_at = now() + make_interval(secs => least(:grace * power(2, o.sends), :cap))
      FROM due WHERE o.id = due.id
    RETURNING o.call_id
    """
)


def relay_pass(ledger: Engine, celery: Celery, settings: Settings, batch: int = 200) -> int:
    """Send again every due row nobody is working on (a worker holds its row locked).
    Returns how many call ids were sent."""
    with ledger.begin() as conn:
        rows = conn.execute(_DUE, {"batch": batch, "grace": settings.relay_grace_s,
                                   "cap": settings.relay_max_backoff_s}).all()
    call_ids = list(dict.fromkeys(r.call_id for r in rows))
    return publish(celery, call_ids)


def publish(celery: Celery, call_ids: Sequence[str]) -> int:
    """Ring the broker once per call; a failure is logged and left to the relay."""
    from gateway.tasks.celery_app import QUEUE, TASK_NAME

    sent = 0
    for call_id in call_ids:
        try:
            celery.send_task(TASK_NAME, args=[call_id], queue=QUEUE, retry=False)
            sent += 1
        except Exception as error:  # the broker is down: the relay sends it again later
            log.warning("could not publish call %s (%s); the relay will retry", call_id, error)
    return sent


class Publisher:
    """Publishes from a background thread, so a slow or absent broker never holds a request."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specgate-publish")

    def __call__(self, call_ids: Sequence[str]) -> None:
        if call_ids:
            self._pool.submit(publish, self.celery, list(call_ids))

    def close(self) -> None:
        # What is still queued is in the outbox: the relay sends it, so never wait on a broker.
        self._pool.shutdown(wait=False, cancel_futures=True)


class LazyPublisher:
    """The gateway's publisher: Celery and the broker connection are set up on the first
    publish, so a gateway whose tools all run in the database never imports Celery."""

    def __init__(self, settings: Settings, ledger_url: str) -> None:
        self._settings = settings
        self._ledger_url = ledger_url
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()

    def __call__(self, call_ids: Sequence[str]) -> None:
        if not call_ids:
            return
        with self._lock:
            if self._publisher is None:
                from gateway.tasks.celery_app import make_celery

                self._publisher = Publisher(make_celery(self._settings, self._ledger_url))
        self._publisher(call_ids)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()

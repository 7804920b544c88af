"""The outbox: durable work for the tool worker, and the relay that rings the broker for it.

Rows are written in the transaction that decides the work (a task call issued, a turn
committed, a held effect to undo). Publishing happens only after that transaction commits —
at once by the writer (the fast path) and again by the relay for every row that is not done and
that no worker holds locked, with doubling delays (``relay_grace_s`` … ``relay_max_backoff_s``).
A broker that is down therefore delays work and loses none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from celery import Celery
from sqlalchemy import Engine, text

from gateway.config import Settings
from gateway.tasks.celery_app import QUEUE, TASK_NAME

log = logging.getLogger("specgate.outbox")


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

"""Waking requests that wait for task calls: the tool worker notifies, the gateway listens.

When the worker records how a call ended it also sends ``NOTIFY specgate_settled, '<call id>'``
in the same transaction, so the notification leaves only once the new status is visible. Each
gateway process keeps one connection listening on that channel (started on first use) and sets
the events of the requests waiting for that call. The ledger stays the truth: a waiter reads
the call again when woken and also every ``FALLBACK_POLL_S``, so a lost notification (the
listener reconnecting, a worker of an older version) costs latency, never correctness.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text

from gateway.notifications import listen

CHANNEL = "specgate_settled"
FALLBACK_POLL_S = 0.05


def notify(conn: Connection, call_id: str) -> None:
    """Announce, when ``conn``'s transaction commits, that ``call_id`` has a new status."""
    conn.execute(text("SELECT pg_notify(:channel, :call)"), {"channel": CHANNEL, "call": call_id})


class SettleListener:
    """One LISTEN connection per process, fanning notifications out to waiting requests."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, call_ids: Iterable[str]) -> Iterator[threading.Event]:
        """An event set whenever one of ``call_ids`` is announced. Register before reading the
        calls' status, so an announcement between the read and the wait is not missed."""
        self._ensure_started()
        event = threading.Event()
        ids = list(call_ids)
        with self._lock:
            for call_id in ids:
                self._waiters.setdefault(call_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                for call_id in ids:
                    waiting = self._waiters.get(call_id)
                    if waiting is not None:
                        waiting.discard(event)
                        if not waiting:
                            del self._waiters[call_id]

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="specgate-settled",
                                                daemon=True)
                self._thread.start()

    def _wake(self, call_id: str) -> None:
        with self._lock:
            events = list(self._waiters.get(call_id, ()))
        for event in events:
            event.set()

    def _run(self) -> None:
        listen(self._dsn, CHANNEL, self._stop, self._wake)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=2.0)

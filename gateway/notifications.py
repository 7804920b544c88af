"""Listening to a Postgres notification channel from a thread of its own.

A ``NOTIFY`` sent in a transaction leaves only when the transaction commits, so a listener hears
of a change once the change is visible. Notifications sent while the listening connection is
down are lost: ``on_connect`` runs on every (re)connection, for the listener to drop whatever a
missed notification may have made stale.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger("specgate.notifications")

RECONNECT_S = 1.0


def listen(dsn: str, channel: str, stop: threading.Event, on_payload: Callable[[str], None],
           on_connect: Callable[[], None] | None = None) -> None:
    """Call ``on_payload`` with each notification's payload until ``stop`` is set,
    reconnecting after a lost connection."""
    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"LISTEN {channel}")
                if on_connect is not None:
                    on_connect()
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        on_payload(note.payload)
        except psycopg.Error:
            log.warning("listener of %s lost its connection; reconnecting", channel,
                        exc_info=True)
            stop.wait(RECONNECT_S)

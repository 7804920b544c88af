"""The settle listener: a worker's NOTIFY wakes exactly the requests waiting for that call."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway.calls.settled import SettleListener, notify


def _notify(url: str, call_id: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        notify(conn, call_id)
    engine.dispose()


def test_notification_wakes_the_waiters_of_that_call_only(ledger_url: str) -> None:
    dsn = make_url(ledger_url).set(drivername="postgresql").render_as_string(hide_password=False)
    listener = SettleListener(dsn)
    try:
        with listener.watching(["call-a"]) as a, listener.watching(["call-b", "call-c"]) as bc:
            # The listener connects in the background: repeat until it has heard one.
            for _ in range(50):
                _notify(ledger_url, "call-a")
                if a.wait(0.2):
                    break
            assert a.is_set()
            assert not bc.is_set()
            _notify(ledger_url, "call-c")
            assert bc.wait(10.0)
        assert listener._waiters == {}  # every waiter unregistered on exit
    finally:
        listener.stop()

"""The Celery application shared by the gateway (which only publishes) and the tool worker.

Messages carry nothing but a call id: the ledger says what to do (tasks are ids, see
docs/architecture.md#outbox). So the broker may lose a message, deliver it twice or deliver it
late without harm: the outbox relay sends the id again while the work is not done, and a worker
works on a call only while it holds the call's outbox row locked.

With no ``SPECGATE_BROKER_URL`` the broker is the ledger's own Postgres through kombu's
SQLAlchemy transport (``specgate-sql+postgresql+psycopg://…``, the same transport polling
faster): no extra server, still a real broker and a real worker process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sql

from gateway.config import Settings


class _SqlChannel(kombu_sql.Channel):  # type: ignore[misc]
    def _engine_from_config(self) -> Any:
        # kombu hands every transport option to create_engine, ``polling_interval`` included.
        options = self.connection.client.transport_options
        options.pop("polling_interval", None)
        return super()._engine_from_config()


class SqlTransport(kombu_sql.Transport):  # type: ignore[misc]
    """kombu's SQL transport, polling every 20 ms instead of every second (the default would be
    most of a task's latency)."""

    Channel = _SqlChannel
    polling_interval = 0.02


SQL_SCHEME = "specgate-sql"
TRANSPORT_ALIASES[SQL_SCHEME] = f"{__name__}:SqlTransport"

TASK_NAME = "specgate.call"
PLAIN_TASK_NAME = "specgate.plain_tool"
QUEUE = "specgate"


def _sqlalchemy_url(ledger_url: str) -> str:
    return ledger_url if "+" in ledger_url.split("://", 1)[0] else ledger_url.replace(
        "postgresql://", "postgresql+psycopg://", 1)


def broker_url(settings: Settings, ledger_url: str) -> str:
    """The configured broker, or the ledger database as one (embedded default)."""
    if settings.broker_url is not None:
        return settings.broker_url
    return f"{SQL_SCHEME}+" + _sqlalchemy_url(ledger_url)


def result_backend(broker: str, ledger_url: str) -> str:
    """Where plain Celery results go (only the benchmark's baseline reads results)."""
    if broker.startswith(("redis://", "rediss://")):
        return broker
    if broker.startswith((f"{SQL_SCHEME}+", "sqla+")):
        return "db+" + _sqlalchemy_url(ledger_url)
    return "rpc://"


def make_celery(settings: Settings, ledger_url: str) -> Celery:
    broker = broker_url(settings, ledger_url)
    app = Celery("specgate", broker=broker, backend=result_backend(broker, ledger_url),
                 set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        database_table_names={"task": "celery_taskmeta", "group": "celery_groupmeta"},
        result_expires=3600,
    )
    return app

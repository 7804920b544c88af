"""The table of scheduled mail: the queue ``deliver_due`` drains and the record of what went."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, Text, func, text

metadata = MetaData()

SCHEDULED = "scheduled"
SENT = "sent"
CANCELLED = "cancelled"
FAILED = "failed"  # refused for good by the server; kept so it is not retried every second

scheduled = Table(
    "mail_scheduled", metadata,
    # The scheduling call's idempotency key: a retried call finds its row instead of adding one.
    Column("id", String(128), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("to_addr", String(254), nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("send_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    Column("error", Text),
    # deliver_due scans only what is still waiting, so sent mail never slows it down.
    Index("mail_scheduled_due", "send_at", postgresql_where=text("status = 'scheduled'")),
    Index("mail_scheduled_tenant", "tenant", "status"),
)

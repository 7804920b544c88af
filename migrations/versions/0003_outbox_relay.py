"""outbox relay columns

The outbox becomes the durable queue of the tool worker: ``next_at`` (when the relay sends the
call again), ``sends`` (how often it did), ``done_at`` (finished; never sent again). A partial
index keeps the relay's scan to rows that are not done.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("next_at", sa.DateTime(timezone=True),
                                      server_default=sa.func.now(), nullable=False))
    op.add_column("outbox", sa.Column("sends", sa.Integer(), server_default="0",
                                      nullable=False))
    op.add_column("outbox", sa.Column("done_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_outbox_pending", "outbox", ["next_at"],
                    postgresql_where=sa.text("done_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_column("outbox", "done_at")
    op.drop_column("outbox", "sends")
    op.drop_column("outbox", "next_at")

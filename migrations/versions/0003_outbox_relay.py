"""outbox relay and approval columns

The outbox becomes the durable queue of the tool worker: ``next_at`` (when the relay sends the
call again), ``sends`` (how often it did), ``done_at`` (finished; never sent again). A partial
index keeps the relay's scan to rows that are not done. Calls gain what an approval needs:
the hash of the single-use confirmation token, the digest of tool and arguments it is bound to,
and its expiry.

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
    op.add_column("calls", sa.Column("confirm_token_hash", sa.String(64), nullable=True))
    op.add_column("calls", sa.Column("confirm_digest", sa.String(64), nullable=True))
    op.add_column("calls", sa.Column("approval_expires_at", sa.DateTime(timezone=True),
                                     nullable=True))


def downgrade() -> None:
    op.drop_column("calls", "approval_expires_at")
    op.drop_column("calls", "confirm_digest")
    op.drop_column("calls", "confirm_token_hash")
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_column("outbox", "done_at")
    op.drop_column("outbox", "sends")
    op.drop_column("outbox", "next_at")

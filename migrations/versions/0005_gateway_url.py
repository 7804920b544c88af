"""gateways.url and gateways.presence: forwarding to a session's owner, and fast failover

Any gateway accepts any request; one for a session that a live gateway owns is forwarded to the
owner at the address it advertises in ``url`` (``SPECGATE_ADVERTISE_URL``), written with its
heartbeat. ``presence``: the gateway holds its presence lock, a session-level advisory lock that
Postgres drops the moment the gateway's connection dies, so the others see it dead at once
instead of after its lease.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("gateways", sa.Column("url", sa.Text(), nullable=True))
    op.add_column("gateways", sa.Column("presence", sa.Boolean(), nullable=False,
                                        server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("gateways", "presence")
    op.drop_column("gateways", "url")

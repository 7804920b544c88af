"""gateways.url: where other gateways forward a session's requests

Any gateway accepts any request; one for a session that a live gateway owns is forwarded to the
owner at the address it advertises here (``SPECGATE_ADVERTISE_URL``), written with its heartbeat.

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


def downgrade() -> None:
    op.drop_column("gateways", "url")

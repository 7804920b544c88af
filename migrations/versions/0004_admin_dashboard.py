"""transcript chunks and worker heartbeats (the admin dashboard)

``transcript_chunks``: what the user said, as the agent worker heard it (partial and final
chunks with the time they were heard), so the dashboard can draw a session's calls on the same
time axis as the speech that caused them. ``worker_heartbeats``: one row per tool worker
process, touched by its housekeeping loop, for the dashboard's health panel.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transcript_chunks",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("turn_id", sa.String(64), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE",
                                name=op.f("fk_transcript_chunks_session_id_sessions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transcript_chunks")),
    )
    op.create_index("ix_transcript_chunks_session_id_at", "transcript_chunks",
                    ["session_id", "at"])
    op.create_index("ix_transcript_chunks_tenant_id", "transcript_chunks", ["tenant", "id"])
    op.create_table(
        "worker_heartbeats",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.drop_index("ix_transcript_chunks_tenant_id", table_name="transcript_chunks")
    op.drop_index("ix_transcript_chunks_session_id_at", table_name="transcript_chunks")
    op.drop_table("transcript_chunks")

"""one audit chain per session, and the owner's epoch that fences every ledger write

The audit trail was one hash chain per tenant, extended under a lock of the tenant's single
``audit_heads`` row: every status change of every session of a tenant, on every gateway, queued
on that row. Each session now has its own chain, whose head lives on the session's row
(``audit_seq``, ``audit_hash``), and ``call_events.seq`` counts within the session.

``sessions.epoch`` is the fencing token of ownership: it grows each time the session passes to
another gateway, and ``specgate_append_events`` — called in the same statement as every status
change — refuses a write made under an older epoch (SQLSTATE ``SGF01``). A gateway that lost a
session while paused can change nothing of it.

Existing events are re-chained per session, after their tenant chain has been verified: a
tenant whose chain does not verify stops the migration (re-chaining would launder the break).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

import hashlib
from collections.abc import Iterable, Sequence
from importlib import import_module
from typing import Any

import sqlalchemy as sa
from alembic import op

from gateway.ledger.audit import GENESIS, Subject, canonical

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_PER_SESSION = """
CREATE FUNCTION specgate_append_events(p_session text, p_epoch bigint, p_events jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
    v_epoch bigint;
    v_seq bigint;
    v_prev text;
    v_hash text;
    v_id bigint;
    e jsonb;
BEGIN
    SELECT tenant, epoch, audit_seq, audit_hash INTO v_tenant, v_epoch, v_seq, v_hash
      FROM sessions WHERE id = p_session FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', p_session;
    END IF;
    IF p_epoch IS NOT NULL AND p_epoch <> v_epoch THEN
        RAISE EXCEPTION 'session % passed to another gateway (epoch % is now %)',
              p_session, p_epoch, v_epoch USING ERRCODE = 'SGF01';
    END IF;
    FOR e IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        v_seq := v_seq + 1;
        v_prev := v_hash;
        v_hash := encode(sha256(convert_to(v_prev || (e->>'payload'), 'UTF8')), 'hex');
        INSERT INTO call_events (tenant, seq, session_id, turn_id, call_id, entity,
                                 from_status, to_status, at, detail, prev_hash, hash)
        VALUES (v_tenant, v_seq, p_session, e->>'turn_id', e->>'call_id', e->>'entity',
                e->>'from', e->>'to', (e->>'at')::timestamptz, e->'detail', v_prev, v_hash)
        RETURNING id INTO v_id;
    END LOOP;
    UPDATE sessions SET audit_seq = v_seq, audit_hash = v_hash WHERE id = p_session;
    RETURN v_id;
END
$$;
"""

# Events were appended under their chain head's lock, so within a chain ids grow with seq.
_EVENTS = ("SELECT id, tenant, seq, session_id, turn_id, call_id, from_status, to_status, at, "
           "detail, prev_hash, hash FROM call_events ORDER BY {key}, id")


def _digest(prev: str, row: Any) -> str:
    subject = Subject(row.tenant, row.session_id, row.turn_id, row.call_id)
    payload = canonical(subject, row.from_status, row.to_status, row.at, row.detail)
    return hashlib.sha256((prev + payload).encode()).hexdigest()


def _rechain(conn: sa.Connection, old_key: str, new_key: str) -> dict[str, tuple[int, str]]:
    """Verify every chain grouped by ``old_key`` and re-chain the events grouped by
    ``new_key`` (``tenant`` or ``session_id``); returns each new chain's head (seq, hash).
    Called with the unique constraint on the chain's seq dropped, so numbers may pass through
    collisions."""
    old: dict[str, str] = {}
    for row in conn.execute(sa.text(_EVENTS.format(key=old_key))):
        chain = getattr(row, old_key)
        prev = old.get(chain, GENESIS)
        if row.prev_hash != prev or row.hash != _digest(prev, row):
            raise RuntimeError(
                f"the audit chain of {chain!r} breaks at event seq {row.seq} (id {row.id}); "
                "it must be investigated before this migration re-chains it")
        old[chain] = row.hash
    heads: dict[str, tuple[int, str]] = {}
    batch: list[dict[str, Any]] = []
    for row in conn.execute(sa.text(_EVENTS.format(key=new_key))):
        chain = getattr(row, new_key)
        seq, prev = heads.get(chain, (0, GENESIS))
        digest = _digest(prev, row)
        heads[chain] = (seq + 1, digest)
        batch.append({"id": row.id, "seq": seq + 1, "prev": prev, "hash": digest})
        if len(batch) >= 1000:
            _write(conn, batch)
    _write(conn, batch)
    return heads


def _write(conn: sa.Connection, batch: list[dict[str, Any]]) -> None:
    if batch:
        conn.execute(sa.text("UPDATE call_events SET seq = :seq, prev_hash = :prev, hash = :hash "
                             "WHERE id = :id"), batch)
        batch.clear()


def _rows(heads: dict[str, tuple[int, str]]) -> Iterable[dict[str, Any]]:
    return ({"key": key, "seq": seq, "hash": digest} for key, (seq, digest) in heads.items())


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("sessions", sa.Column("epoch", sa.BigInteger(), nullable=False,
                                        server_default="0"))
    op.add_column("sessions", sa.Column("audit_seq", sa.BigInteger(), nullable=False,
                                        server_default="0"))
    op.add_column("sessions", sa.Column("audit_hash", sa.String(64), nullable=False,
                                        server_default=GENESIS))
    op.drop_constraint("uq_call_events_tenant", "call_events", type_="unique")
    heads = _rechain(conn, "tenant", "session_id")
    rows = list(_rows(heads))
    if rows:
        conn.execute(sa.text("UPDATE sessions SET audit_seq = :seq, audit_hash = :hash "
                             "WHERE id = :key"), rows)
    op.create_unique_constraint("uq_call_events_session_id", "call_events", ["session_id", "seq"])
    op.execute("DROP FUNCTION specgate_append_events(text, jsonb)")
    op.execute(APPEND_PER_SESSION)
    op.drop_table("audit_heads")


def downgrade() -> None:
    conn = op.get_bind()
    op.execute("DROP FUNCTION specgate_append_events(text, bigint, jsonb)")
    op.create_table(
        "audit_heads",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
    )
    op.drop_constraint("uq_call_events_session_id", "call_events", type_="unique")
    heads = _rechain(conn, "session_id", "tenant")
    conn.execute(sa.text("INSERT INTO audit_heads (tenant, seq, hash, prev_hash) "
                         "SELECT DISTINCT tenant, 0, :g, :g FROM sessions"), {"g": GENESIS})
    conn.execute(sa.text("INSERT INTO audit_heads (tenant, seq, hash, prev_hash) "
                         "SELECT DISTINCT tenant, 0, :g, :g FROM api_keys "
                         "ON CONFLICT (tenant) DO NOTHING"), {"g": GENESIS})
    rows = list(_rows(heads))
    if rows:
        conn.execute(sa.text("UPDATE audit_heads SET seq = :seq, hash = :hash, prev_hash = "
                             "(SELECT prev_hash FROM call_events WHERE tenant = :key AND "
                             "seq = :seq) WHERE tenant = :key"), rows)
    op.create_unique_constraint("uq_call_events_tenant", "call_events", ["tenant", "seq"])
    # the function of migration 0002, as it was
    op.execute(import_module("migrations.versions.0002_append_events_function").FUNCTION)
    op.drop_column("sessions", "audit_hash")
    op.drop_column("sessions", "audit_seq")
    op.drop_column("sessions", "epoch")

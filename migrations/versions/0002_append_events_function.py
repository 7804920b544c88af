"""append events in one statement

The audit chain (call_events, hash-chained per tenant) was advanced by one statement per
event. A PL/pgSQL function appends a batch of events under one lock of the tenant's chain
head, so a state change and its audit events are written by a single statement.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION specgate_append_events(p_tenant text, p_events jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_prev text;
    v_hash text;
    v_id bigint;
    e jsonb;
BEGIN
    SELECT seq, hash INTO v_seq, v_hash FROM audit_heads WHERE tenant = p_tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no audit chain for tenant %', p_tenant;
    END IF;
    FOR e IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        v_seq := v_seq + 1;
        v_prev := v_hash;
        v_hash := encode(sha256(convert_to(v_prev || (e->>'payload'), 'UTF8')), 'hex');
        INSERT INTO call_events (tenant, seq, session_id, turn_id, call_id, entity,
                                 from_status, to_status, at, detail, prev_hash, hash)
        VALUES (p_tenant, v_seq, e->>'session_id', e->>'turn_id', e->>'call_id', e->>'entity',
                e->>'from', e->>'to', (e->>'at')::timestamptz, e->'detail', v_prev, v_hash)
        RETURNING id INTO v_id;
    END LOOP;
    UPDATE audit_heads SET seq = v_seq, prev_hash = v_prev, hash = v_hash
     WHERE tenant = p_tenant;
    RETURN v_id;
END
$$;
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION specgate_append_events(text, jsonb)")

"""Migration 0006 moves the audit trail from one chain per tenant to one per session: the
existing events are verified as they were chained, re-chained per session, and verify after;
the downgrade restores one chain per tenant. A tenant chain that does not verify stops it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from gateway.ledger.audit import GENESIS, Subject, canonical, verify_chain
from gateway.migrate import downgrade_ledger, upgrade_ledger

EVENTS_PER_SESSION = 5


def _old_chain(conn: Connection, tenant: str, sessions: list[str]) -> None:
    """A tenant chain as revision 0005 wrote it: the sessions' events interleaved, appended
    by that revision's own function under the tenant's head."""
    conn.execute(text("INSERT INTO audit_heads (tenant, seq, hash, prev_hash) "
                      "VALUES (:t, 0, :g, :g)"), {"t": tenant, "g": GENESIS})
    for sid in sessions:
        conn.execute(text("INSERT INTO sessions (id, tenant, metadata) VALUES (:s, :t, '{}')"),
                     {"s": sid, "t": tenant})
    for n in range(EVENTS_PER_SESSION):
        for sid in sessions:
            subject = Subject(tenant, sid, f"turn_{sid}", f"call_{n}")
            at = datetime.now(UTC)
            detail = {"n": n}
            event = {"session_id": sid, "turn_id": subject.turn_id, "call_id": subject.call_id,
                     "entity": "call", "from": None, "to": "proposed", "at": at.isoformat(),
                     "detail": detail,
                     "payload": canonical(subject, None, "proposed", at, detail)}
            conn.execute(text("SELECT specgate_append_events(:t, CAST(:e AS jsonb))"),
                         {"t": tenant, "e": orjson.dumps([event]).decode()})


def _tenant_chain_holds(conn: Connection, tenant: str) -> int:
    """The per-tenant check of revision 0005: events in seq order, each linked to the last."""
    prev, count = GENESIS, 0
    for row in conn.execute(text("SELECT * FROM call_events WHERE tenant = :t ORDER BY seq"),
                            {"t": tenant}):
        subject = Subject(row.tenant, row.session_id, row.turn_id, row.call_id)
        payload = canonical(subject, row.from_status, row.to_status, row.at, row.detail)
        assert row.prev_hash == prev
        assert row.hash == hashlib.sha256((prev + payload).encode()).hexdigest()
        prev, count = row.hash, count + 1
    head = conn.execute(text("SELECT seq, hash FROM audit_heads WHERE tenant = :t"),
                        {"t": tenant}).one()
    assert (head.seq, head.hash) == (count, prev)
    return count


@pytest.fixture
def at_0005(pg_home: Path) -> Iterator[tuple[str, Engine]]:
    """A new ledger database at revision 0005, and an engine on it."""
    from gateway.embedded import embedded_database_url

    url = embedded_database_url(pg_home, f"sg_mig_{uuid.uuid4().hex[:6]}")
    upgrade_ledger(url, "0005")
    engine = create_engine(url, poolclass=NullPool)
    yield url, engine
    engine.dispose()


def test_existing_events_are_rechained_per_session_and_back(
        at_0005: tuple[str, Engine]) -> None:
    url, engine = at_0005
    tenants = {"acme": ["ses_a1", "ses_a2", "ses_a3"], "beta": ["ses_b1"]}
    with engine.begin() as conn:
        for tenant, sessions in tenants.items():
            _old_chain(conn, tenant, sessions)
    upgrade_ledger(url, "0006")
    with engine.connect() as conn:
        for tenant, sessions in tenants.items():
            assert verify_chain(conn, tenant) == EVENTS_PER_SESSION * len(sessions)
        heads = conn.execute(text("SELECT id, audit_seq FROM sessions")).all()
        assert {row.audit_seq for row in heads} == {EVENTS_PER_SESSION}
        seqs = conn.execute(text("SELECT array_agg(seq ORDER BY seq) FROM call_events "
                                 "WHERE session_id = 'ses_a2'")).scalar()
        assert seqs == list(range(1, EVENTS_PER_SESSION + 1))
    downgrade_ledger(url, "0005")
    with engine.connect() as conn:
        for tenant, sessions in tenants.items():
            assert _tenant_chain_holds(conn, tenant) == EVENTS_PER_SESSION * len(sessions)


def test_a_tenant_chain_that_does_not_verify_stops_the_migration(
        at_0005: tuple[str, Engine]) -> None:
    url, engine = at_0005
    with engine.begin() as conn:
        _old_chain(conn, "acme", ["ses_a1", "ses_a2"])
        conn.execute(text("UPDATE call_events SET to_status = 'held' WHERE seq = 4"))
    with pytest.raises(RuntimeError, match="breaks at event seq 4"):
        upgrade_ledger(url, "0006")
    with engine.connect() as conn:  # the migration's transaction left everything as it was
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0005"
        assert conn.execute(text("SELECT count(*) FROM call_events WHERE tenant = 'acme' "
                                 "AND seq = 4 AND to_status = 'held'")).scalar() == 1
        columns = conn.execute(text("SELECT column_name FROM information_schema.columns "
                                    "WHERE table_name = 'sessions'")).scalars().all()
        assert "epoch" not in columns

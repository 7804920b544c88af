"""Two-phase commit of a turn's transactions, in one place: PREPARE, COMMIT PREPARED and
ROLLBACK PREPARED (docs/architecture.md#two-phase-commit).

A turn whose effects live only in the ledger's database commits locally, with its decision
(the commit marker, ``gateway.transactions.decision``) inside the same transaction. A turn that
also holds another database PREPAREs it first, makes the decision durable in the ledger, then
COMMITs PREPARED. The decision is the truth: a prepared transaction is finished from it by
whoever gets there (the committing gateway, the approvals, or recovery), and one with no
decision is presumed aborted once no live gateway can still be deciding it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, exc, text

from gateway import faults
from gateway.transactions.decision import APPROVAL, COMMIT, make_gid, write_decision
from gateway.transactions.holder import TurnHold

log = logging.getLogger("specgate.turns")


def commit_hold(hold: TurnHold, ledger: Engine, turn_id: str, outcomes: dict[str, Any],
                dispatch: Sequence[str], grace_s: float) -> None:
    """Make every held effect durable, with the decision (and the outbox rows of the
    ``dispatch`` calls) recorded exactly once: the ledger's own transaction commits with the
    decision inside it; every other database is PREPAREd first and COMMIT PREPARED after the
    decision is durable (a failure there is left to recovery, which reads the decision)."""
    local = [h for h in hold.connections.values() if h.gid is None]
    foreign = [h for h in hold.connections.values() if h.gid is not None]
    for held in foreign:
        held.prepare()
    if foreign:
        faults.hit("after_prepare")
    gids = ",".join(h.gid for h in foreign if h.gid) or None
    if local:
        write_decision(local[0].conn, turn_id, COMMIT, outcomes, gids,
                       dispatch=dispatch, grace_s=grace_s)
        local[0].tx.commit()
    else:
        with ledger.begin() as conn:
            write_decision(conn, turn_id, COMMIT, outcomes, gids, dispatch=dispatch,
                           grace_s=grace_s)
    faults.hit("after_decision")
    for held in foreign:
        try:
            held.tx.commit()
            held.prepared = False
        except exc.DBAPIError:
            # The decision is durable; the reconciler commits what is still prepared.
            log.exception("COMMIT PREPARED %r failed; left to the reconciler", held.gid)


def prepare_for_approval(hold: TurnHold, ledger: Engine, turn_id: str,
                         outcomes: dict[str, Any], dispatch: Sequence[str],
                         grace_s: float) -> None:
    """PREPARE every held transaction, the ledger's own included, and record the decision
    ``approval``: the effects wait, durable and holding their locks but no connection,
    until the calls' approval resolves them (``gateway.calls.approvals``). A crash before
    the decision is written leaves prepared transactions without one: presumed abort."""
    for held in hold.connections.values():
        if held.gid is None:
            held.gid = make_gid(hold.gid_prefix, turn_id)
        held.prepare()
    faults.hit("after_prepare")
    gids = ",".join(h.gid for h in hold.connections.values() if h.gid)
    with ledger.begin() as conn:
        write_decision(conn, turn_id, APPROVAL, outcomes, gids, dispatch=dispatch,
                       grace_s=grace_s)


def prepared_gids(conn: Connection, prefix: str) -> list[tuple[str, Any]]:
    """Our prepared transactions on the connection's database: (gid, prepared_at)."""
    rows = conn.execute(
        text("SELECT gid, prepared FROM pg_prepared_xacts WHERE gid LIKE :p AND database = "
             "current_database()"),
        {"p": f"{prefix}:%"},
    )
    return [(row.gid, row.prepared) for row in rows]


def end_prepared(conn: Connection, gid: str, *, commit: bool) -> None:
    """COMMIT or ROLLBACK PREPARED one transaction (``conn`` in autocommit, on its database)."""
    conn.exec_driver_sql(f"{'COMMIT' if commit else 'ROLLBACK'} PREPARED '{gid}'")


def finish_prepared(engines: Sequence[Engine], gids: Sequence[str], commit: bool) -> int:
    """COMMIT (or ROLLBACK) PREPARED each of ``gids`` on whichever database holds it; returns
    how many it finished. Call it only once the decision is durable in the ledger: a gid it
    cannot finish now stays prepared and the reconciler finishes it from that decision."""
    verb = "COMMIT" if commit else "ROLLBACK"
    done = 0
    for engine in engines:
        try:
            with engine.connect() as pooled:
                conn = pooled.execution_options(isolation_level="AUTOCOMMIT")
                found = conn.execute(text("SELECT gid FROM pg_prepared_xacts WHERE gid = ANY(:g) "
                                          "AND database = current_database()"),
                                     {"g": list(gids)}).scalars().all()
                for gid in found:
                    end_prepared(conn, gid, commit=commit)
                    done += 1
        except exc.DBAPIError:
            log.exception("%s PREPARED of %s failed; left to the reconciler", verb, gids)
    return done

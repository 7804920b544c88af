"""The commit marker: a turn's decision, durable in the ledger, written exactly once.

A row of ``commit_markers`` per decided turn: ``commit``, ``abort`` or ``approval`` (the turn
committed, but its prepared transactions wait for approvals of calls in them, which later turn
it into ``commit`` or ``abort``), the outcomes of its kept calls and the global ids of its
prepared transactions. The primary key makes the first decision the only one, which is what
lets a gateway committing a turn and the reconciler aborting an orphaned PREPARE race safely
(presumed abort). The commit protocol (``gateway.turns.commit``) writes it inside the turn's
own transaction when the ledger is the only database, and in the ledger between PREPARE and
COMMIT PREPARED otherwise (``gateway.transactions.twophase``); recovery reads it to finish
what a dead gateway left (``gateway.turns.recovery``).

A global id is ``<prefix>:<turn id>:<random>``: a prepared transaction found on any database
names the turn whose decision rules it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from gateway.db import driver
from gateway.ledger.transitions import LedgerConn, dumps
from gateway.tasks.outbox import RUN, enqueue

# Decisions a commit marker records. ``approval``: the turn committed, but its prepared
# transactions wait for approvals of calls in them, which turn it into ``commit`` or ``abort``.
COMMIT, ABORT, APPROVAL = "commit", "abort", "approval"


def write_decision(conn: LedgerConn, turn_id: str, decision: str, outcomes: Mapping[str, Any],
                   gid: str | None = None, *, if_absent: bool = False,
                   dispatch: Sequence[str] = (), grace_s: float = 2.0) -> None:
    """Record a turn's decision (the commit marker). The primary key makes the first decision
    the only one: ``if_absent`` leaves an existing one as it is (the reconciler's abort).
    ``dispatch``: calls the tool worker runs because of this decision; their outbox rows are
    written in the same transaction, so the decision and the work it orders are one fact."""
    sql = ("INSERT INTO commit_markers (turn_id, decision, gid, outcomes) "
           "VALUES (%(turn_id)s, %(decision)s, %(gid)s, %(outcomes)s)")
    if if_absent:
        sql += " ON CONFLICT (turn_id) DO NOTHING"
    driver(conn).execute(sql, {"turn_id": turn_id, "decision": decision, "gid": gid,
                                "outcomes": Jsonb(dict(outcomes), dumps=dumps)})
    enqueue(conn, dispatch, RUN, grace_s)


def read_decision(conn: LedgerConn, turn_id: str) -> dict[str, Any] | None:
    """The turn's commit marker as a dict (``decision``, ``outcomes``, ``gid``), or None."""
    row = driver(conn).execute(
        "SELECT decision, outcomes, gid FROM commit_markers WHERE turn_id = %s", [turn_id]
    ).fetchone()
    return None if row is None else {"decision": row[0], "outcomes": row[1], "gid": row[2]}


def make_gid(prefix: str, turn_id: str) -> str:
    """A fresh global transaction id; it names the turn so recovery can find its decision."""
    return f"{prefix}:{turn_id}:{secrets.token_hex(6)}"


def turn_of_gid(gid: str) -> str | None:
    parts = gid.split(":")
    return parts[1] if len(parts) == 3 else None

"""Call and turn states as data: the enums and the transition tables.

``gateway.ledger.transitions.transition_call`` / ``transition_turn`` are the only writers of a
status; they refuse any move that is not in these tables.
"""

from __future__ import annotations

from enum import StrEnum


class CallStatus(StrEnum):
    PROPOSED = "proposed"
    RUNNING = "running"
    HELD = "held"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STAGED = "staged"
    CANCELLED = "cancelled"
    COMMITTED = "committed"
    CONFLICT = "conflict"
    ABORTED = "aborted"
    EXPIRED = "expired"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    DENIED = "denied"
    DISPATCHED = "dispatched"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class TurnStatus(StrEnum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ABORTED = "aborted"
    EXPIRED = "expired"


C = CallStatus
_UNDECIDED_EXITS = {C.CANCELLED, C.COMMITTED, C.CONFLICT, C.ABORTED, C.EXPIRED}

# How a turn lets a live call go. A ``task`` call is queued (proposed) and runs (running) in
# the tool worker while its turn goes on, so a turn can be cancelled, expire or abort under it;
# the worker then finds the call dropped, and compensates a reversible effect that completed
# anyway.
DROPPED_CALL_STATUSES = frozenset({C.CANCELLED, C.EXPIRED, C.ABORTED})

CALL_TRANSITIONS: dict[CallStatus, frozenset[CallStatus]] = {
    C.PROPOSED: frozenset({C.RUNNING, C.STAGED} | DROPPED_CALL_STATUSES),
    C.RUNNING: frozenset({C.HELD, C.SUCCEEDED, C.FAILED} | DROPPED_CALL_STATUSES),
    C.HELD: frozenset(_UNDECIDED_EXITS),
    C.SUCCEEDED: frozenset(_UNDECIDED_EXITS),
    # A staged call runs at commit: it may fail there like any sequential call would.
    C.STAGED: frozenset(_UNDECIDED_EXITS | {C.FAILED}),
    C.COMMITTED: frozenset({C.AWAITING_APPROVAL, C.DISPATCHED}),
    C.AWAITING_APPROVAL: frozenset({C.APPROVED, C.DENIED, C.EXPIRED}),
    # A db call's effect is already in its prepared turn transaction: no dispatch; the call
    # ends with the transaction, which a denial of another call in it can roll back.
    C.APPROVED: frozenset({C.DISPATCHED, C.SUCCEEDED, C.FAILED}),
    C.DISPATCHED: frozenset({C.SUCCEEDED, C.FAILED}),
    C.CANCELLED: frozenset({C.COMPENSATING}),
    C.EXPIRED: frozenset({C.COMPENSATING}),
    C.ABORTED: frozenset({C.COMPENSATING}),
    C.COMPENSATING: frozenset({C.COMPENSATED, C.COMPENSATION_FAILED}),
    C.COMPENSATION_FAILED: frozenset({C.COMPENSATING}),
}

# Statuses in which a call still takes part in its open turn (it can be kept or cancelled).
LIVE_CALL_STATUSES = frozenset({C.PROPOSED, C.RUNNING, C.HELD, C.SUCCEEDED, C.STAGED})
# Statuses in which a call has produced a result the agent has seen.
RESULT_STATUSES = frozenset({C.HELD, C.SUCCEEDED})

T = TurnStatus
TURN_TRANSITIONS: dict[TurnStatus, frozenset[TurnStatus]] = {
    T.OPEN: frozenset({T.COMMITTING, T.CANCELLING, T.EXPIRED, T.ABORTED}),
    T.COMMITTING: frozenset({T.COMMITTED, T.ABORTED}),
    T.CANCELLING: frozenset({T.CANCELLED}),
}

RESOLVED_TURN_STATUSES = frozenset({T.COMMITTED, T.CANCELLED, T.ABORTED, T.EXPIRED})


def call_move_allowed(source: str, target: str) -> bool:
    return CallStatus(target) in CALL_TRANSITIONS.get(CallStatus(source), frozenset())


def turn_move_allowed(source: str, target: str) -> bool:
    return TurnStatus(target) in TURN_TRANSITIONS.get(TurnStatus(source), frozenset())

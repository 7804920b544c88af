"""What both domains' ``tau2data`` loaders need: where each record sits in its user's list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def user_positions(users: Mapping[str, Any], records: Mapping[str, Any],
                   field: str) -> dict[str, int]:
    """Each record's place in its user's list ``field`` (a retail user's ``orders``, an airline
    user's ``reservations``), which the tables keep as ``user_position``.

    Raises ``ValueError`` for data the tables cannot hold: a record that is not listed exactly
    once, by the user it names.
    """
    positions: dict[str, int] = {}
    for user in users.values():
        for position, record_id in enumerate(user[field]):
            owner = records.get(record_id, {}).get("user_id")
            if owner != user["user_id"] or record_id in positions:
                raise ValueError(f"{record_id!r} is listed by user {user['user_id']!r}, "
                                 f"but belongs to {owner!r} or is listed twice")
            positions[record_id] = position
    missing = sorted(set(records) - set(positions))
    if missing:
        raise ValueError(f"{field} {missing[:5]} are not listed by their users")
    return positions

"""The read view of a call, as the API returns it."""

from __future__ import annotations

from gateway.calls.schemas import CallView
from gateway.ledger.rows import CallRow


def call_view(call: CallRow, client_ids: dict[str, str]) -> CallView:
    data = dict(vars(call))
    data["depends_on"] = [client_ids.get(d, d) for d in call.depends_on]
    data["supersedes"] = call.supersedes_id
    return CallView.model_validate(data)

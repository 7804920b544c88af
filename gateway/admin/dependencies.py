"""Dependencies of the admin routes: which tenants a key sees, and loading what a route
acts on (or the domain's 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from starlette.concurrency import run_in_threadpool

from gateway.admin import actions, queue
from gateway.auth.service import Principal
from gateway.deps import AdminKey, RuntimeDep
from gateway.ledger.rows import CallRow


def visible_tenants(key: Principal) -> list[str]:
    """The tenants whose data a key may see: an admin key sees its own tenant only. Every
    query of the dashboard goes through this list, so a cross-tenant operator role would be a
    change here and nowhere else."""
    return [key.tenant]


async def tenants_of(key: AdminKey) -> list[str]:
    return visible_tenants(key)


Tenants = Annotated[list[str], Depends(tenants_of)]


async def valid_call(call_id: str, rt: RuntimeDep, tenants: Tenants) -> CallRow:
    return await run_in_threadpool(actions.load_call, rt, tenants, call_id)


ValidCall = Annotated[CallRow, Depends(valid_call)]


def _blank(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


async def queue_filter(status: str = queue.PENDING, effect: str | None = None,
                       tool: str | None = None, tenant: str | None = None,
                       session: str | None = None, q: str | None = None,
                       cursor: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=200)] = 25) -> queue.QueueFilter:
    """The queue's filters from the query string (empty fields count as absent, as a plain
    HTML form sends them)."""
    return queue.QueueFilter(status=_blank(status) or queue.PENDING, effect=_blank(effect),
                             tool=_blank(tool), tenant=_blank(tenant), session=_blank(session),
                             q=_blank(q), cursor=_blank(cursor), limit=limit)


QueueFilterDep = Annotated[queue.QueueFilter, Depends(queue_filter)]

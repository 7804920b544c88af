"""Admin routes of a tenant: its API keys and the audit-chain check. Admin keys only."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from gateway.auth import service
from gateway.deps import AdminKey, RuntimeDep
from gateway.errors import Conflict
from gateway.ledger import models
from gateway.ledger.audit import verify_chain

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: service.Role
    name: str = Field(default="", max_length=255)


class KeyView(BaseModel):
    id: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    secret: str | None = Field(default=None, description="Only in the creation response.")


@router.post("/keys", status_code=201, response_model=KeyView)
def create_key(body: NewKey, rt: RuntimeDep, key: AdminKey) -> KeyView:
    key_id, secret = service.create_key(rt.dbs.ledger, key.tenant, body.role, body.name)
    view = next(k for k in list_keys(rt, key) if k.id == key_id)
    return view.model_copy(update={"secret": secret})


@router.get("/keys", response_model=list[KeyView])
def list_keys(rt: RuntimeDep, key: AdminKey) -> list[KeyView]:
    table = models.table_of(models.ApiKey)
    with rt.dbs.ledger.connect() as conn:
        rows = conn.execute(select(table).where(table.c.tenant == key.tenant)
                            .order_by(table.c.created_at))
        return [KeyView.model_validate(dict(r._mapping)) for r in rows]


@router.delete("/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, rt: RuntimeDep, key: AdminKey) -> None:
    service.revoke_key(rt.dbs.ledger, key.tenant, key_id)


@router.get("/audit/verify")
async def verify_audit(rt: RuntimeDep, key: AdminKey) -> dict[str, object]:
    """Recompute the tenant's hash chain; 200 with the event count when it holds."""

    def check() -> int:
        with rt.dbs.ledger.connect() as conn:
            try:
                return verify_chain(conn, key.tenant)
            except ValueError as error:
                raise Conflict(str(error), code="audit_chain_broken") from error

    return {"tenant": key.tenant, "events": await run_in_threadpool(check), "ok": True}

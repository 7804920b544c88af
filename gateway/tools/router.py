"""``GET /v1/tools``: what the registry offers, as the model would be shown it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import CurrentKey, RuntimeDep

router = APIRouter(prefix="/v1/tools", tags=["tools"])


@router.get("")
def list_tools(rt: RuntimeDep, key: CurrentKey) -> dict[str, list[dict[str, Any]]]:
    return {"tools": [tool.describe() for tool in rt.registry]}

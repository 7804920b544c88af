"""Shared route dependencies: the runtime, the caller's key, idempotency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import idempotency
from gateway.auth.service import KeyCache, Principal
from gateway.runtime import Runtime

# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the
# threadpool, one thread hop each per request. These do no blocking work (a key lookup that
# misses the cache goes to the threadpool explicitly).


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


async def current_key(request: Request,
                      authorization: Annotated[str | None, Header()] = None) -> Principal:
    keys: KeyCache = request.app.state.keys
    token = bearer_token(authorization)
    cached = keys.cached(token)
    if cached is not None:
        return cached
    return await run_in_threadpool(keys.authenticate, token)


CurrentKey = Annotated[Principal, Depends(current_key)]


async def admin_key(key: CurrentKey) -> Principal:
    key.require_admin()
    return key


AdminKey = Annotated[Principal, Depends(admin_key)]


@dataclass
class Idempotent:
    """Runs a mutating handler at most once per ``Idempotency-Key`` (see gateway.idempotency)."""

    runtime: Runtime
    tenant: str
    key: str | None
    request_hash: str

    @classmethod
    def of(cls, runtime: Runtime, principal: Principal, key: str | None, method: str,
           path: str, body: bytes) -> Idempotent:
        digest = "" if key is None else idempotency.fingerprint(method, path, body)
        return cls(runtime, principal.tenant, key, digest)

    def run(self, handler: Callable[[], tuple[int, Any]]) -> Response:
        return idempotency.run(self.runtime.dbs.ledger, self.tenant, self.key,
                               self.request_hash, handler)


async def idempotent(request: Request,
                     idempotency_key: Annotated[str | None, Header()] = None) -> Idempotent:
    # Runtime and key are looked up here rather than declared as sub-dependencies: FastAPI
    # would solve those again for every request (it caches their values, not the work of
    # extracting their parameters), which costs more than the lookups themselves.
    principal = await current_key(request, request.headers.get("authorization"))
    body = await request.body() if idempotency_key is not None else b""
    return Idempotent.of(await get_runtime(request), principal, idempotency_key,
                         request.method, request.url.path, body)


IdempotentDep = Annotated[Idempotent, Depends(idempotent)]

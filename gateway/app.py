"""The FastAPI application: routers, the one error handler, and the background reconciler."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway import edge, metrics
from gateway.admin import router as admin_router
from gateway.asgi import replay
from gateway.auth import router as auth_router
from gateway.auth.service import KeyCache
from gateway.calls import router as calls_router
from gateway.calls.settled import SettleListener
from gateway.config import Settings, get_settings
from gateway.db import Databases
from gateway.errors import SpecgateError, database_unavailable, error_response
from gateway.presence import PresenceLock
from gateway.runtime import Runtime, default_gateway_id
from gateway.sessions import fastpath, forwarding
from gateway.sessions import router as sessions_router
from gateway.tasks.outbox import LazyPublisher
from gateway.tools import router as tools_router
from gateway.tools.registry import load_registry
from gateway.transactions.holder import HeldTurns
from gateway.turns import recovery

log = logging.getLogger("specgate.app")


class Maintenance:
    """Heartbeat + reconciler/reaper loop of one gateway, on a daemon thread."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.presence = PresenceLock(rt.dbs.driver_dsn, rt.gateway_id)
        self._present = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="specgate-reconciler",
                                        daemon=True)

    def start(self) -> None:
        self._beat()
        recovery.reconcile(self.rt, startup=True)
        self._thread.start()

    def _beat(self) -> None:
        """Keep the presence lock and heartbeat. Losing the lock (a reconnect) means others may
        have taken sessions over: this gateway claims each again on its next request."""
        present = self.presence.hold()
        if self._present and not present:
            self.rt.forget_ownership()
        self._present = present
        self.rt.heartbeat(presence=present)

    def _loop(self) -> None:
        period = self.rt.settings.reaper_period_s
        while not self._stop.wait(min(period, self.rt.settings.owner_lease_s / 3)):
            try:
                self._beat()
                recovery.reconcile(self.rt)
            except Exception:
                log.exception("reconciler pass failed; retrying next period")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.presence.release()


CORRELATION = "specgate.correlation_id"  # in the scope once an unexpected error is logged


class GatewayApp(FastAPI):
    """The FastAPI app, with the edge's checks of every body (``gateway.edge``), forwarding to
    a session's owner (``sessions.forwarding``) and the hot route's fast path
    (``sessions.fastpath``) in front, and a JSON answer for any error at all."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._checked(scope, receive, watched)
        except Exception as error:
            if CORRELATION in scope:
                return  # the app's own handler answered it and logged it
            if isinstance(error, SpecgateError):
                response = error_response(error)
            else:
                response = _unexpected(scope, error)
            if not started:
                await response(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in edge.BODY_METHODS:
            limit = self.state.runtime.settings.max_body_bytes
            declared = edge.declared_length(scope)
            if declared is not None and declared > limit:
                raise edge.too_large(limit)
            body = await edge.read_limited(receive, limit)
            if body is None:
                return  # the client went away mid-request
            if body and edge.is_json(scope):
                edge.check_json(body)
            receive = replay(body, receive)
        if forwarding.applies(scope):
            await self.state.forwarder(self._serve, scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if fastpath.matches(scope):
            await fastpath.serve(self.state, super().__call__, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _unexpected(scope: Scope, error: Exception) -> JSONResponse:
    """A bug: logged with its traceback under a correlation id the answer names."""
    correlation_id = uuid.uuid4().hex[:16]
    scope[CORRELATION] = correlation_id
    log.error("unexpected error %s answering %s %s", correlation_id, scope.get("method"),
              scope.get("path"), exc_info=error)
    return _error(500, "internal_error", "an unexpected error; it is logged under this "
                  "correlation id", correlation_id=correlation_id)


def _error(status: int, code: str, message: str, **details: object) -> JSONResponse:
    return JSONResponse(SpecgateError(message, code=code, **details).to_body(),
                          status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SpecgateError)
    async def specgate_error(request: Request, error: SpecgateError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.TimeoutError)
    @app.exception_handler(psycopg.OperationalError)
    async def database_down(request: Request, error: Exception) -> JSONResponse:
        log.warning("database unavailable: %r", error)
        return error_response(database_unavailable(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in error.errors()]
        return _error(422, "invalid_request", "the request does not match the API schema",
                      errors=problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return _unexpected(request.scope, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail))


def create_runtime(settings: Settings, gateway_id: str | None = None,
                   advertise_url: str | None = None) -> Runtime:
    """The gateway process's runtime, with the parts it holds built from the settings."""
    dbs = Databases(settings)
    return Runtime(
        settings=settings,
        dbs=dbs,
        registry=load_registry(settings.adapters),
        holds=HeldTurns(
            settings.max_held_transactions,
            settings.gid_prefix,
            settings.lock_timeout_ms,
            idle_timeout_ms=int((settings.turn_ttl_s + 60) * 1000),
        ),
        settled=SettleListener(dbs.driver_dsn),
        publisher=LazyPublisher(settings, dbs.ledger_url),
        gateway_id=gateway_id or default_gateway_id(),
        advertise_url=settings.advertise_url or advertise_url,
    )


def create_app(settings: Settings | None = None, *, gateway_id: str | None = None,
               advertise_url: str | None = None, background: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sync handlers (and the fast path) run on anyio's worker threads; their number is the
        # default limiter of the event loop serving this app, so it is set from inside it.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        rt = create_runtime(settings, gateway_id=gateway_id, advertise_url=advertise_url)
        app.state.runtime = rt
        app.state.forwarder = forwarding.Forwarder(
            rt.gateway_id, settings.forward_timeout_s, remember_s=settings.owner_recheck_s)
        app.state.keys = KeyCache(rt.dbs.ledger, settings.key_cache_s)
        app.state.keys.listen(rt.dbs.driver_dsn)
        metrics.HELD.set_function(lambda: rt.holds.held_connections)
        maintenance = Maintenance(rt)
        if background:
            maintenance.start()
        try:
            yield
        finally:
            maintenance.stop()
            app.state.keys.close()
            await app.state.forwarder.aclose()
            rt.close()

    app = GatewayApp(title="specgate", version="0.1.0", lifespan=lifespan,
                  description="Tool-execution gateway for speculative voice agents.")
    install_error_handlers(app)
    for module in (sessions_router, calls_router, tools_router, auth_router, admin_router):
        app.include_router(module.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, object]:
        rt: Runtime = app.state.runtime
        with rt.dbs.ledger.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return {"ok": True, "gateway": rt.gateway_id, "held": rt.holds.held_connections}

    @app.get("/metrics", tags=["ops"])
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

"""The measured operations, each as a per-session step that returns only its timed span.

A step may issue untimed requests around the timed one (rolling over to a fresh turn, issuing
the calls a commit will hold), so every scenario measures exactly one operation while turns
stay the size of a real voice turn: a turn that kept growing would make each request reload
an ever longer call list and measure that instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.tasks.celery_app import PLAIN_TASK_NAME, QUEUE
from lab.bench.client import KeepAliveClient
from tool_adapters.demo import ADAPTER
from tool_adapters.sdk import ToolContext

CALLS_PER_TURN = 5
"""Timed calls per turn in the call scenarios, and held calls per turn in the commit one."""
TASK_TOOL = "shipping_quote"
"""A safe ``task``-runner tool of the demo adapter: it runs in the tool worker."""
TASK_WAIT_S = 10.0
"""How long a task call may take, through the gateway (``?wait=``) or plain Celery."""
PLAIN_POLL_S = 0.005
"""How often plain Celery's ``AsyncResult.get`` reads the result backend."""


def task_arguments(sku: str) -> dict[str, Any]:
    return {"sku": sku, "quantity": 2, "country": "DE"}


class BenchError(RuntimeError):
    """The gateway answered something a correct run never sees; the figures would be wrong."""


@dataclass
class BenchSession:
    """One gateway session, driven by one thread over one keep-alive HTTP connection."""

    http: KeepAliveClient
    httpx: httpx.Client
    sku: str
    sid: str = ""
    tid: str = ""
    order_id: str = ""
    cid: int = 0
    in_turn: int = 0
    pending_adds: int = 0
    committed_adds: int = 0

    @classmethod
    def connect(cls, base_url: str, key: str, sku: str) -> BenchSession:
        headers = {"Authorization": f"Bearer {key}"}
        return cls(KeepAliveClient(base_url, headers),
                   httpx.Client(base_url=base_url, headers=headers, timeout=60.0), sku)

    def close(self) -> None:
        self.http.close()
        self.httpx.close()

    def post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        status, raw = self.http.post(path, body)
        if status != expect:
            raise BenchError(f"POST {path} answered {status}, expected {expect}: "
                             f"{raw[:500].decode(errors='replace')}")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise BenchError(f"POST {path} answered {data!r}, not an object")
        return data

    def call(self, tool: str, arguments: dict[str, Any], expect: str,
             wait: float = 0) -> dict[str, Any]:
        """Issue a call in the open turn and check the status it settled in (a task call
        still ``proposed``/``running`` when ``wait`` ran out fails that check too)."""
        self.cid += 1
        self.in_turn += 1
        body = {"tool": f"demo.{tool}", "client_call_id": self.cid, "arguments": arguments}
        query = f"?wait={wait:g}" if wait else ""
        call = self.post(f"/v1/sessions/{self.sid}/calls{query}", body, 201)
        if call["status"] != expect:
            raise BenchError(f"demo.{tool} settled as {call['status']!r}, expected {expect!r}: "
                             f"{call.get('error')}")
        return call

    def commit(self) -> None:
        turn = self.post(f"/v1/sessions/{self.sid}/turns/{self.tid}/commit", {}, 200)
        if turn["status"] != "committed":
            raise BenchError(f"turn {self.tid} ended {turn['status']!r}: {turn.get('error')}")
        self.committed_adds += self.pending_adds
        self.pending_adds = 0

    def next_turn(self) -> None:
        self.tid = self.post(f"/v1/sessions/{self.sid}/turns", {}, 201)["id"]
        self.in_turn = 0

    def settle(self) -> None:
        """Commit whatever the open turn holds and open a fresh one (between phases)."""
        if self.in_turn:
            self.commit()
            self.next_turn()

    def open(self) -> BenchSession:
        """Create the session and its order (committed), leaving an empty turn open."""
        created = self.post("/v1/sessions", {"metadata": {"bench": "gateway"}}, 201)
        self.sid, self.tid = created["id"], created["turns"][0]["id"]
        order = self.call("create_order", {"customer": "bench"}, expect="held")
        self.order_id = order["result"]["order_id"]
        self.commit()
        self.next_turn()
        return self


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def direct_step(engine: Engine, order_id: str) -> float:
    """The tool alone: pooled connection, read-only transaction, invoke, roll back."""
    spec = ADAPTER.tool("get_order")
    start = time.perf_counter()
    with engine.connect() as conn, conn.begin() as tx:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        db = Session(bind=conn)
        ctx = ToolContext(call_id="bench", idempotency_key="bench", tenant="bench",
                          session_id="bench", turn_id="bench", db=db)
        try:
            spec.invoke(ctx, {"order_id": order_id})
        finally:
            db.close()
            tx.rollback()
    return time.perf_counter() - start


def http_floor_step(s: BenchSession) -> float:
    """An authenticated ``GET /v1/tools``: HTTP, routing and auth, no database — the part of
    every gateway call that is the web stack rather than the gateway's own work."""
    def get() -> None:
        status, raw = s.http.get("/v1/tools")
        if status != 200:
            raise BenchError(f"GET /v1/tools answered {status}")
        json.loads(raw)

    return _timed(get)


def httpx_floor_step(s: BenchSession) -> float:
    """The same ``GET /v1/tools`` through an httpx client (keep-alive, JSON decoded as an app
    would): beside the floor above, what a heavier client library adds to every request."""
    def get() -> None:
        response = s.httpx.get("/v1/tools")
        if response.status_code != 200:
            raise BenchError(f"GET /v1/tools answered {response.status_code}")
        response.json()

    return _timed(get)


def safe_step(s: BenchSession) -> float:
    """One ``get_order`` through the gateway (a read in a read-only transaction)."""
    if s.in_turn >= CALLS_PER_TURN:
        s.settle()
    return _timed(lambda: s.call("get_order", {"order_id": s.order_id}, expect="succeeded"))


def reversible_step(s: BenchSession) -> float:
    """One ``add_item`` through the gateway, held in the turn transaction until commit."""
    if s.in_turn >= CALLS_PER_TURN:
        s.settle()
    arguments = {"order_id": s.order_id, "sku": s.sku, "quantity": 1}
    elapsed = _timed(lambda: s.call("add_item", arguments, expect="held"))
    s.pending_adds += 1
    return elapsed


def commit_step(s: BenchSession) -> float:
    """The commit of a turn holding ``CALLS_PER_TURN`` add_items (issued and reopened untimed)."""
    s.settle()
    arguments = {"order_id": s.order_id, "sku": s.sku, "quantity": 1}
    for _ in range(CALLS_PER_TURN):
        s.call("add_item", arguments, expect="held")
        s.pending_adds += 1
    elapsed = _timed(s.commit)
    s.next_turn()
    return elapsed


def task_step(s: BenchSession) -> float:
    """One ``shipping_quote`` through the gateway, answered once the worker has run it: ledger
    row and outbox, publish, worker, result back through the ledger to the waiting request."""
    if s.in_turn >= CALLS_PER_TURN:
        s.settle()

    def call() -> None:
        quote = s.call(TASK_TOOL, task_arguments(s.sku), expect="succeeded", wait=TASK_WAIT_S)
        if not isinstance(quote["result"], dict) or quote["result"].get("sku") != s.sku:
            raise BenchError(f"demo.{TASK_TOOL} returned {quote['result']!r}")

    return _timed(call)


@dataclass
class PlainCelery:
    """One session of the baseline: the same tool function sent as a plain Celery task on the
    same broker and worker, no gateway and no ledger. The app may be shared by the sessions:
    sending takes a producer from its pool, and each thread gets its own result backend."""

    celery: Celery
    sku: str


def plain_celery_step(p: PlainCelery) -> float:
    """``send_task(...).get()`` of ``shipping_quote``: publish, worker, result backend, poll."""
    def call() -> None:
        sent = p.celery.send_task(PLAIN_TASK_NAME, args=[f"demo.{TASK_TOOL}",
                                                         task_arguments(p.sku)], queue=QUEUE)
        try:
            quote = sent.get(timeout=TASK_WAIT_S, interval=PLAIN_POLL_S)
        except CeleryTimeout as error:
            raise BenchError(f"plain Celery task not done within {TASK_WAIT_S:g} s") from error
        if not isinstance(quote, dict) or quote.get("sku") != p.sku:
            raise BenchError(f"plain Celery {TASK_TOOL} returned {quote!r}")

    return _timed(call)

"""The OpenAI Realtime API over a websocket as a backend (text modality).

One Realtime connection serves one agent session; the service's conversation holds the
transcript, so each step sends only what the service does not have yet. The backend keeps a
mirror of that conversation (item id, role, text per item) and, at each ``stream(context)``:

1. **settles** the previous response: a response the runtime stopped is still running or
   ending on the service; its events are read until its ``response.done``, so what it wrote is
   known exactly and none of its events can reach the new step;
2. sends ``session.update`` (instructions = the system prompt, output ``text``) once per
   connection, again only if the prompt changed;
3. **syncs** the conversation with the runtime's transcript (``_plan``): what the service
   lacks becomes items (``conversation.item.create``: user ``input_text``, assistant
   ``output_text``) — the user text injected since the last step (query updates,
   observations, errors) is one new item, appended in order — with ids chosen here so no
   acknowledgement has to be awaited. Where the
   runtime kept a different assistant text than the service's (an interrupted step: a half
   action dropped, ``</think_interrupted>`` appended), the service's items from there on are
   deleted and the runtime's text is created instead — ``conversation.item.truncate`` works on
   audio only, so delete + create is what the protocol allows for text;
4. sends ``response.create`` and yields its ``response.output_text.delta`` (or the older
   ``response.text.delta``) deltas until its ``response.done``. Only deltas of this step's
   response id are passed on (the id comes from ``response.created``, checked against a tag in
   the response's metadata).

Interrupt: when the runtime closes the generator before ``response.done``, ``response.cancel``
is sent at once (so the service stops generating); the service may have finished already and
answer the cancel with an ``error`` naming the cancel's ``event_id`` — such errors are expected
and skipped. Errors: an ``error`` event, a closed socket, a stalled service, a response that
ends ``failed`` raise ``BackendError``. After a connection-level failure or an ``error`` event
the connection is dropped (the mirror can no longer be trusted) and the next step opens a new
one, re-sending the whole transcript; a ``failed`` response leaves the connection as it is
(its ``response.done`` says what it wrote). A step interrupted while its events were being
sent drops the connection too: which of them went out is unknown. Reads use
``asyncio.timeout``, not ``wait_for``, which on Python 3.11 can swallow the runtime's cancel
when an event arrives at the same moment (the stream then runs on, unseen).

The ``RealtimeBackend.aclose`` method closes the connection; whoever owns the backend calls
it when the session ends (the ``Backend`` protocol has no close).

The ``openai`` client's realtime support does all of the websocket work (``websockets`` is
not used directly). Events are read as raw JSON (``recv_bytes``) rather than the client's typed
models, so the older event names parse too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI, OpenAIError
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import ConversationItemParam
from websockets.exceptions import ConnectionClosed, WebSocketException

from agent_worker.errors import BackendError
from agent_worker.model import Context, Role

DELTAS = {"response.output_text.delta", "response.text.delta"}
TAG = "specgate_step"  # response metadata key that names the step a response belongs to
_LINK_ERRORS = (ConnectionClosed, WebSocketException, OSError, OpenAIError, TimeoutError)


@dataclass
class _Item:
    """One item of the service's conversation, as this backend knows it."""

    id: str
    role: Role
    text: str = ""


@dataclass
class _Response:
    tag: str
    id: str | None = None
    done: bool = False
    status: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class _Broken(BackendError):
    """A failure after which the connection is dropped."""


@dataclass
class RealtimeBackend:
    client: AsyncOpenAI
    model: str
    max_output_tokens: int = 1024
    idle_timeout_s: float = 60.0  # no event for this long while waiting: the service stalled
    settle_timeout_s: float = 10.0  # a cancelled response must end within this
    name: str = "realtime"
    _conn: AsyncRealtimeConnection | None = field(default=None, init=False, repr=False)
    _items: list[_Item] = field(default_factory=list, init=False, repr=False)
    _instructions: str | None = field(default=None, init=False, repr=False)
    _open: _Response | None = field(default=None, init=False, repr=False)
    _expected_errors: set[str] = field(default_factory=set, init=False, repr=False)

    @classmethod
    def create(cls, *, model: str, base_url: str | None = None,
               websocket_base_url: str | None = None, api_key: str | None = None,
               **options: Any) -> RealtimeBackend:
        """A client for OpenAI's API, or for ``websocket_base_url`` (e.g. ``ws://host/v1``;
        the client appends ``/realtime?model=…``). A local server usually needs no key: a
        placeholder is sent when neither ``api_key`` nor OPENAI_API_KEY is set."""
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        client = AsyncOpenAI(api_key=key, base_url=base_url,
                             websocket_base_url=websocket_base_url, max_retries=0)
        return cls(client, model, **options)

    async def stream(self, context: Context) -> AsyncGenerator[str, None]:
        response = await self._begin(context)
        try:
            while not response.done:
                delta = await self._next(response, self.idle_timeout_s)
                if delta:
                    yield delta
        except _Broken:
            await self._drop()
            raise
        finally:
            if not response.done and self._conn is not None:
                await self._cancel(response)
        if response.status == "failed":
            error = response.details.get("error") or {}
            raise BackendError(f"realtime model {self.model!r}: the response failed: "
                               f"{error.get('message') or response.details or 'no reason given'}")

    async def aclose(self) -> None:
        """Close the connection (the session is over)."""
        await self._drop()

    # A step -------------------------------------------------------------------------------

    async def _begin(self, context: Context) -> _Response:
        """Connect if needed, settle the previous response, then tell the service what it
        lacks and ask for a response."""
        try:
            conn = await self._connection()
            await self._settle()
        except _Broken:
            await self._drop()
            raise
        except _LINK_ERRORS as error:
            await self._drop()
            raise BackendError(f"realtime model {self.model!r}: {_describe(error)}") from error
        response = _Response(uuid.uuid4().hex)
        try:
            await self._send_step(conn, context, response)
        except _LINK_ERRORS as error:
            await self._drop()
            raise BackendError(f"realtime model {self.model!r}: {_describe(error)}") from error
        except BaseException:
            # Interrupted while sending: which events went out is unknown, so the mirror can't
            # be trusted; the next step starts on a new connection.
            await self._drop()
            raise
        self._open = response
        return response

    async def _send_step(self, conn: AsyncRealtimeConnection, context: Context,
                         response: _Response) -> None:
        if self._instructions != context.system:
            await conn.session.update(session={
                "type": "realtime", "instructions": context.system,
                "output_modalities": ["text"], "max_output_tokens": self.max_output_tokens})
            self._instructions = context.system
        await self._sync(conn, context.segments)
        await conn.response.create(response={"metadata": {TAG: response.tag}})

    async def _connection(self) -> AsyncRealtimeConnection:
        if self._conn is None:
            self._items, self._instructions, self._open = [], None, None
            self._expected_errors.clear()
            self._conn = await self.client.realtime.connect(model=self.model).enter()
        return self._conn

    async def _settle(self) -> None:
        """Read the previous response's events until its ``response.done``."""
        previous = self._open
        while previous is not None and not previous.done:
            await self._next(previous, self.settle_timeout_s)

    async def _sync(self, conn: AsyncRealtimeConnection,
                    segments: Sequence[tuple[Role, str]]) -> None:
        stale = [item.id for item in self._items if not item.text]  # e.g. a response cut at once
        self._items = [item for item in self._items if item.text]
        deleted, created = _plan(self._items, segments)
        for item_id in [*stale, *deleted]:
            await conn.conversation.item.delete(item_id=item_id)
        self._items = [item for item in self._items if item.id not in set(deleted)]
        for role, text in created:
            item = _Item(f"sg_{uuid.uuid4().hex[:24]}", role, text)
            await conn.conversation.item.create(item=_message(item))
            self._items.append(item)

    async def _cancel(self, response: _Response) -> None:
        assert self._conn is not None
        event_id = f"cancel_{response.tag}"
        self._expected_errors.add(event_id)
        try:
            if response.id is None:
                await self._conn.response.cancel(event_id=event_id)
            else:
                await self._conn.response.cancel(event_id=event_id, response_id=response.id)
        except _LINK_ERRORS:
            await self._drop()  # the next step reconnects

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._open = None
        if conn is not None:
            with contextlib.suppress(*_LINK_ERRORS):  # already gone
                await conn.close()

    # Events -------------------------------------------------------------------------------

    async def _next(self, response: _Response, timeout: float) -> str:
        """Read one event; returns the text delta it carries for ``response`` ("" if none)."""
        assert self._conn is not None
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the runtime's
            # cancel when an event arrives at the same moment.
            async with asyncio.timeout(timeout):
                raw = await self._conn.recv_bytes()
        except TimeoutError as error:
            raise _Broken(f"realtime model {self.model!r}: no event from the service for "
                          f"{timeout:g} s") from error
        except _LINK_ERRORS as error:
            raise _Broken(f"realtime model {self.model!r}: {_describe(error)}") from error
        try:
            event = json.loads(raw)
        except ValueError as error:
            raise _Broken(f"realtime model {self.model!r}: not a JSON event: {raw[:80]!r}") \
                from error
        return self._observe(event, response)

    def _observe(self, event: dict[str, Any], response: _Response) -> str:
        kind = event.get("type")
        if kind == "error":
            self._on_error(event.get("error") or {})
        elif kind == "response.created":
            body = event.get("response") or {}
            if (body.get("metadata") or {}).get(TAG, response.tag) == response.tag:
                response.id = body.get("id")
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "message" and item.get("role") == "assistant" \
                    and item.get("id"):
                self._items.append(_Item(str(item["id"]), "assistant", _text(item)))
        elif kind in DELTAS:
            delta = str(event.get("delta", ""))
            for item in self._items:
                if item.id == event.get("item_id"):
                    item.text += delta
            if response.id is not None and event.get("response_id") == response.id:
                return delta
        elif kind == "response.done":
            self._on_done(event.get("response") or {}, response)
        return ""

    def _on_error(self, error: dict[str, Any]) -> None:
        if error.get("event_id") in self._expected_errors:
            self._expected_errors.discard(error["event_id"])
            return  # the answer to a cancel that came too late: harmless
        code = f" ({error['code']})" if error.get("code") else ""
        raise _Broken(f"realtime model {self.model!r}: the service reported an error{code}: "
                      f"{error.get('message', 'no message')}")

    def _on_done(self, body: dict[str, Any], response: _Response) -> None:
        """The service's final word on a response: its items' text replaces what the deltas
        built (a cancelled response may have written more than was read)."""
        for output in body.get("output") or []:
            for item in self._items:
                if item.id == output.get("id") and output.get("content") is not None:
                    item.text = _text(output)
        ours = (response.id is not None and body.get("id") == response.id) \
            or (body.get("metadata") or {}).get(TAG) == response.tag
        if ours:
            response.done, response.id = True, body.get("id")
            response.status = body.get("status")
            if response.status == "cancelled":  # the cancel was honoured: no error will come
                self._expected_errors.discard(f"cancel_{response.tag}")
            response.details = body.get("status_details") or {}


def _plan(items: Sequence[_Item], segments: Sequence[tuple[Role, str]],
          ) -> tuple[list[str], list[tuple[Role, str]]]:
    """What turns the service's conversation into the runtime's transcript: the ids of the
    items to delete, then the (role, text) items to append. Both sides are compared as
    segments (consecutive items of one role joined). A last segment the transcript extends is
    extended by a new item; from the first other difference on, the service's items are
    replaced."""
    server: list[tuple[Role, str, list[str]]] = []
    for item in items:
        if server and server[-1][0] == item.role:
            role, text, ids = server[-1]
            server[-1] = (role, text + item.text, [*ids, item.id])
        else:
            server.append((item.role, item.text, [item.id]))
    for i, (role, text) in enumerate(segments):
        if i == len(server):
            return [], list(segments[i:])
        held_role, held, ids = server[i]
        if (held_role, held) == (role, text):
            continue
        if held_role == role and text.startswith(held) and i == len(server) - 1:
            return [], [(role, text[len(held):]), *segments[i + 1:]]
        return [item_id for *_, tail in server[i:] for item_id in tail], list(segments[i:])
    return [item_id for *_, tail in server[len(segments):] for item_id in tail], []


def _message(item: _Item) -> ConversationItemParam:
    if item.role == "user":
        return {"id": item.id, "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": item.text}]}
    return {"id": item.id, "type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": item.text}]}


def _text(item: dict[str, Any]) -> str:
    return "".join(str(part.get("text") or part.get("transcript") or "")
                   for part in item.get("content") or [])


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionClosed):
        return f"the connection closed ({error})"
    return f"{type(error).__name__}: {error}"

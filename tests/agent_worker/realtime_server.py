"""A local websocket server speaking the subset of the OpenAI Realtime event protocol (GA event
names, text modality) the realtime backend uses: the fake at the true external edge, OpenAI's
service. Event shapes follow the installed ``openai`` package's ``types/realtime``.

It keeps one conversation per connection (``conversation.item.create`` / ``.delete`` with
client ids, ``previous_item_id`` ignored: items are appended), answers ``response.create`` with
the pieces a test's ``reply`` function returns for the conversation so far, streamed as
``response.output_text.delta`` events ``delay_s`` apart, and honours ``response.cancel`` (the
partial assistant item stays in the conversation, as on the real service). Mistakes a client
can make answer with an ``error`` event naming the client's ``event_id``.

Every client event is recorded (``events``), and the conversation as it stood at each
``response.create`` (``snapshots``), so tests assert on what the service was told. A reply may
hold directives besides text: ``Fail`` (the response ends ``failed``), ``Oops`` (an ``error``
event), ``Drop`` (the socket is cut without a close frame).

The server runs its own event loop in a thread, so a test may drive the client with
``asyncio.run`` (or a whole runtime) in the main thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


@dataclass(frozen=True)
class Fail:
    """End the response with status ``failed`` and this message."""

    message: str


@dataclass(frozen=True)
class Oops:
    """Send an ``error`` event (a server error, not caused by a client event)."""

    message: str
    code: str = "server_error"


@dataclass(frozen=True)
class Drop:
    """Cut the connection abruptly (no close frame)."""


Piece = str | Fail | Oops | Drop
Conversation = list[tuple[str, str]]  # (role, text) per item, in order
Reply = Callable[[Conversation], Sequence[Piece]]


def pieces(text: str, size: int = 6) -> list[Piece]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def merged(conversation: Conversation) -> list[tuple[str, str]]:
    """Consecutive items of one role joined: what the runtime's transcript looks like."""
    out: list[tuple[str, str]] = []
    for role, text in conversation:
        if out and out[-1][0] == role:
            out[-1] = (role, out[-1][1] + text)
        elif text:
            out.append((role, text))
    return out


class RealtimeServer:
    def __init__(self, reply: Reply, delay_s: float = 0.01, *, legacy: bool = False) -> None:
        self.reply, self.delay_s = reply, delay_s
        self.delta_type = "response.text.delta" if legacy else "response.output_text.delta"
        self.events: list[tuple[int, dict[str, Any]]] = []  # (connection number, event)
        self.sent: list[tuple[int, str]] = []  # (connection number, server event type)
        self.snapshots: list[Conversation] = []
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self._ids = itertools.count(1)
        self._seen = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._port = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="realtime-server")

    @property
    def url(self) -> str:
        """The websocket base URL (the client appends ``/realtime``)."""
        return f"ws://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> RealtimeServer:
        self._thread.start()
        if not self._ready.wait(timeout=20):
            raise RuntimeError("the realtime test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(timeout=20)

    # What tests read ------------------------------------------------------------------------

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Client events of one type, in arrival order."""
        with self._seen:
            return [e for _, e in self.events if e.get("type") == kind]

    def kinds(self) -> list[str]:
        with self._seen:
            return [e.get("type", "?") for _, e in self.events]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 20.0) -> bool:
        """Wait until the server received ``count`` client events of this type."""
        with self._seen:
            return self._seen.wait_for(lambda: len(self.of(kind)) >= count, timeout)

    def wait_sent(self, kind: str, count: int = 1, timeout: float = 20.0) -> bool:
        """Wait until the server sent ``count`` events of this type."""
        with self._seen:
            return self._seen.wait_for(
                lambda: sum(k == kind for _, k in self.sent) >= count, timeout)

    def record(self, number: int, kind: str) -> None:
        with self._seen:
            self.sent.append((number, kind))
            self._seen.notify_all()

    @property
    def connections(self) -> int:
        return len(self.paths)

    # The server -----------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._session, "127.0.0.1", 0) as server:
            self._port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop
            for ws in server.connections:  # a client that never closed (its loop is gone)
                ws.transport.abort()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    async def _session(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        with self._seen:
            number = len(self.paths)
            self.paths.append(ws.request.path)
            self.auth.append(ws.request.headers.get("Authorization"))
        session = _Session(self, ws, number)
        await session.send("session.created", session=session.config)
        try:
            async for message in ws:
                event = json.loads(message)
                with self._seen:
                    self.events.append((number, event))
                    self._seen.notify_all()
                await session.handle(event)
        except ConnectionClosed:
            pass
        finally:
            await session.stop_response()


class _Session:
    """One connection: its session config, conversation and the response in progress."""

    def __init__(self, server: RealtimeServer, ws: ServerConnection, number: int) -> None:
        self.server, self.ws, self.number = server, ws, number
        self.config: dict[str, Any] = {"type": "realtime", "object": "realtime.session",
                                       "id": server.next_id("sess"), "instructions": "",
                                       "output_modalities": ["audio"]}
        self.items: list[dict[str, Any]] = []
        self.response: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, "event_id": self.server.next_id("event"),
                                       **fields}))
        self.server.record(self.number, kind)

    async def error(self, event: dict[str, Any], code: str, message: str) -> None:
        await self.send("error", error={"type": "invalid_request_error", "code": code,
                                        "message": message, "event_id": event.get("event_id")})

    def conversation(self) -> Conversation:
        return [(i["role"], _text(i)) for i in self.items]

    async def handle(self, event: dict[str, Any]) -> None:
        handler = {"session.update": self.on_session_update,
                   "conversation.item.create": self.on_item_create,
                   "conversation.item.delete": self.on_item_delete,
                   "response.create": self.on_response_create,
                   "response.cancel": self.on_response_cancel}.get(event.get("type", ""))
        if handler is None:
            await self.error(event, "unknown_event", f"unknown event {event.get('type')!r}")
        else:
            await handler(event)

    async def on_session_update(self, event: dict[str, Any]) -> None:
        self.config.update(event.get("session", {}))
        await self.send("session.updated", session=self.config)

    async def on_item_create(self, event: dict[str, Any]) -> None:
        item = dict(event.get("item", {}))
        problem = _check_item(item, {i["id"] for i in self.items})
        if problem:
            await self.error(event, "invalid_value", problem)
            return
        item.setdefault("id", self.server.next_id("item"))
        item.update(object="realtime.item", status="completed")
        previous = self.items[-1]["id"] if self.items else None
        self.items.append(item)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=item)

    async def on_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if item_id not in {i["id"] for i in self.items}:
            await self.error(event, "item_not_found", f"no item {item_id!r}")
            return
        self.items = [i for i in self.items if i["id"] != item_id]
        await self.send("conversation.item.deleted", item_id=item_id)

    async def on_response_create(self, event: dict[str, Any]) -> None:
        if self.response is not None:
            await self.error(event, "conversation_already_has_active_response",
                             f"response {self.response['id']!r} is in progress")
            return
        self.server.snapshots.append(self.conversation())
        params = event.get("response", {})
        self.response = {"object": "realtime.response", "id": self.server.next_id("resp"),
                         "status": "in_progress", "output": [], "conversation_id": "conv_1",
                         "metadata": params.get("metadata"),
                         "output_modalities": self.config.get("output_modalities")}
        await self.send("response.created", response=self.response)
        script = list(self.server.reply(self.conversation()))
        self.task = asyncio.create_task(self.play(self.response, script))

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response["id"]):
            await self.error(event, "response_cancel_not_active",
                             "there is no active response to cancel")
            return
        response = self.response
        await self.stop_response()
        await self.finish(response, "cancelled", reason="client_cancelled")

    async def stop_response(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def play(self, response: dict[str, Any], script: list[Piece]) -> None:
        item: dict[str, Any] = {"id": self.server.next_id("item"), "object": "realtime.item",
                                "type": "message", "role": "assistant",
                                "status": "in_progress",
                                "content": [{"type": "output_text", "text": ""}]}
        where = {"response_id": response["id"], "output_index": 0}
        previous = self.items[-1]["id"] if self.items else None
        self.items.append(item)
        response["output"].append(item)
        await self.send("response.output_item.added", **where, item=item)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        at = {**where, "item_id": item["id"], "content_index": 0}
        await self.send("response.content_part.added", **at, part={"type": "text", "text": ""})
        for piece in script:
            await asyncio.sleep(self.server.delay_s)
            if not await self.play_piece(piece, response, item, at):
                return
        await self.send("response.output_text.done", **at, text=_text(item))
        item["status"] = "completed"
        await self.send("response.output_item.done", **where, item=item)
        self.task = None
        await self.finish(response, "completed")

    async def play_piece(self, piece: Piece, response: dict[str, Any], item: dict[str, Any],
                         at: dict[str, Any]) -> bool:
        """Play one piece of a reply; False when it ended the response."""
        if isinstance(piece, str):
            item["content"][0]["text"] += piece
            await self.send(self.server.delta_type, **at, delta=piece)
            return True
        if isinstance(piece, Drop):
            self.ws.transport.abort()
        elif isinstance(piece, Oops):
            await self.send("error", error={"type": "server_error", "code": piece.code,
                                            "message": piece.message})
            self.response = self.task = None
        else:
            self.task = None
            await self.finish(response, "failed", error={"type": "server_error",
                                                         "message": piece.message})
        return False

    async def finish(self, response: dict[str, Any], status: str, **details: Any) -> None:
        for item in response["output"]:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        response["status"] = status
        response["status_details"] = {"type": status, **details} if details else None
        self.response = None
        await self.send("response.done", response=response)


def _text(item: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for part in item.get("content", []))


def _check_item(item: dict[str, Any], ids: set[str]) -> str | None:
    """Why the service would refuse this message item, if it would."""
    expected = {"user": "input_text", "assistant": "output_text"}.get(item.get("role", ""))
    if item.get("type") != "message" or expected is None:
        return f"unsupported item: type {item.get('type')!r}, role {item.get('role')!r}"
    if item.get("id") in ids:
        return f"duplicate item id {item['id']!r}"
    kinds = [part.get("type") for part in item.get("content", [])]
    if not kinds or any(kind != expected for kind in kinds):
        return f"a {item['role']} message needs {expected!r} content, got {kinds}"
    return None

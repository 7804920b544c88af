"""``LocalSmtp``: a real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives.

Tests talk to it over a socket exactly as the adapter talks to a production relay, so what
they check is what went over the wire, not what a mock was called with.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import Message
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message: the envelope as the client sent it and the parsed content."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: Message


class _BoundController(Controller):
    """Serves on a socket bound beforehand to port 0, so no free-port guess can be raced."""

    def __init__(self, handler: Any, sock: socket.socket) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1])
        self._sock = sock

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class LocalSmtp:
    """A local SMTP server for tests: ``start()``/``stop()`` or ``with LocalSmtp() as smtp``.

    Set ``refuse = True`` to answer every recipient with ``refuse_reply`` (550 by default;
    set a 4xx reply to imitate a "try later"), and ``delay_s`` to slow down each accepted
    message, which widens race windows in concurrency tests. Both may change while running.
    """

    def __init__(self) -> None:
        self.refuse = False
        self.refuse_reply = "550 5.1.1 Mailbox unavailable"
        self.delay_s = 0.0
        self.host = "127.0.0.1"
        self.port = 0
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._controller: _BoundController | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """Mail adapter settings that point at this server."""
        return {"smtp_host": self.host, "smtp_port": self.port, "smtp_timeout_s": 5}

    def start(self) -> LocalSmtp:
        if self._controller is not None:
            raise RuntimeError("LocalSmtp is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, 0))
            controller = _BoundController(self, sock)
            controller.start()
        except BaseException:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> LocalSmtp:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def messages(self) -> list[Received]:
        """What arrived so far, oldest first (a copy: later arrivals do not change it)."""
        with self._changed:
            return list(self._received)

    def clear(self) -> None:
        with self._changed:
            self._received.clear()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Block until at least ``count`` messages arrived and return them all; raises
        ``TimeoutError`` saying how many came if they do not arrive in time."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self._received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"expected {count} messages, got {len(self._received)}")
                self._changed.wait(left)
            return list(self._received)

    # aiosmtpd handler hooks, called on the server's event loop thread.

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.refuse:
            return self.refuse_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        raw = envelope.original_content
        if isinstance(raw, str):
            raw = raw.encode()
        # Stored with local line ends, as a mailbox would: bodies then compare to plain text.
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"),
                                           policy=email.policy.default)
        received = Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), message)
        with self._changed:
            self._received.append(received)
            self._changed.notify_all()
        return "250 Message accepted"

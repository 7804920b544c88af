"""A small local HTTP server speaking the OpenAI chat-completions streaming protocol (SSE
``chat.completion.chunk`` events, then ``[DONE]``): the fake at the true external edge, the
model server. A test gives it a function from the request's messages to the pieces of text to
stream; it records every request and notices a client that goes away mid-stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[list[dict[str, Any]]], list[str]]


class FakeOpenAI:
    def __init__(self, reply: Reply, delay_s: float = 0.01) -> None:
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        self.sent: list[int] = []  # pieces sent per request
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                pieces = fake.reply(body["messages"])
                sent = 0
                try:
                    for piece in pieces:
                        self._event({"content": piece}, None)
                        sent += 1
                        time.sleep(fake.delay_s)
                    self._event({}, "stop")
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()
                finally:
                    fake.sent.append(sent)

            def _event(self, delta: dict[str, Any], finish: str | None) -> None:
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "created": 0, "model": "fake",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

        return Handler

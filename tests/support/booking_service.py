"""The booking service (``tool_adapters.booking.service``) running for real on localhost.

Tests talk to it over TCP like the adapter does, so timeouts, refused connections and 5xx answers
are the real thing. The app, and with it the bookings, outlives ``stop()``: a stopped and
restarted service is an external system that went down and came back with its data.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from tool_adapters.booking.service import create_service


class LocalBookingService:
    """``create_service()`` under uvicorn in a background thread, on 127.0.0.1.

    The port is free when first started and kept across restarts, so ``url`` stays valid.
    """

    def __init__(self, port: int = 0, startup_timeout_s: float = 10.0) -> None:
        self.app = create_service()
        self._port = port
        self._startup_timeout_s = startup_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the service has no port until it has been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LocalBookingService:
        """Serve, and return once the service answers HTTP requests."""
        if self.running:
            return self
        # Binding here, not in uvicorn, picks a free port without a window for another process
        # to take it between choosing and listening.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="booking-service", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError("the booking service thread exited during startup")
            try:
                if httpx.get(f"{self.url}/_control/requests", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the booking service did not answer within {self._startup_timeout_s}s")

    def stop(self) -> None:
        """Stop serving; afterwards connections to ``url`` are refused."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError("the booking service did not stop within 10s")

    def __enter__(self) -> LocalBookingService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}/_control/{path}", json=body, timeout=5.0)
        response.raise_for_status()
        return response.json()

    def fail(self, method: str, times: int, status: int = 503) -> None:
        """Make the next ``times`` requests with ``method`` answer ``status`` instead."""
        self._control("POST", "fail", {"method": method, "times": times, "status": status})

    def reset(self) -> None:
        """Forget every booking, idempotency key, armed fault and logged request."""
        self._control("POST", "reset")

    def requests(self) -> list[dict[str, Any]]:
        """The requests served so far (control calls excluded): method, path, idempotency_key,
        status."""
        result: list[dict[str, Any]] = self._control("GET", "requests")
        return result

"""Real gateway servers as child processes, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import httpx

from gateway.children import ChildProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalGateway(ChildProcess):
    """``specgate serve``, without a tool worker of its own unless ``worker``."""

    port: int = field(default_factory=free_port)
    worker: bool = False
    what = "gateway"

    def __post_init__(self) -> None:
        # A lab gateway is stopped at once: no drain grace unless the caller sets one.
        self.env = {"SPECGATE_DRAIN_GRACE_S": "0", **self.env}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return ["serve", "--port", str(self.port), "--worker" if self.worker else "--no-worker"]

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

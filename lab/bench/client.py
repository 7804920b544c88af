"""The benchmark's HTTP client: one keep-alive HTTP/1.1 connection per session, on the
standard library's ``http.client``.

Why not httpx, which the agent worker and the conformance replay use: the client shares the
machine's two cores with the gateway and Postgres, and the benchmark measures the gateway. On
this machine an httpx ``post(json=...)`` + ``.json()`` costs ~0.5 ms of CPU per request against
~0.15 ms for ``http.client`` (same request, same server), a difference that would be reported
as the gateway's overhead. The report keeps an HTTP-floor row through httpx, so what a heavier
client adds stays visible beside the rest.

The server closes a keep-alive connection left idle past its timeout (uvicorn: 5 s, e.g. while
another scenario runs). Before each request the socket is polled without waiting, as urllib3
does: readable on an idle connection means the server has closed it, and a new connection is
made. A request is never sent twice.
"""

from __future__ import annotations

import http.client
import json
import select
from typing import Any
from urllib.parse import urlsplit


class KeepAliveClient:
    """JSON requests over one persistent connection, with the given headers on each."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float = 60.0) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"expected an http:// base URL, got {base_url!r}")
        self._conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout_s)
        self._headers = {**headers, "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        return self._request("POST", path, json.dumps(body).encode())

    def get(self, path: str) -> tuple[int, bytes]:
        return self._request("GET", path, None)

    def close(self) -> None:
        self._conn.close()

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self._closed_by_server():
            self._conn.close()  # the next request connects anew
        self._conn.request(method, path, body, self._headers)
        response = self._conn.getresponse()
        return response.status, response.read()

    def _closed_by_server(self) -> bool:
        sock = self._conn.sock
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))


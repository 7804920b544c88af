"""TCP forwarders in the benchmark's process: a load balancer in miniature, and a server that
goes down and comes back.

``RoundRobinProxy`` hands each new connection to the next of several servers, with no affinity:
``specgate bench scale`` puts its gateways behind one, and so do the scale-out tests, so that
every request of a client that opens a connection per request lands on any gateway, as behind a
stock balancer. ``CuttableProxy``, its base, forwards to one TCP address or Unix socket (the
embedded Postgres listens on one); ``down()`` closes the listener and every forwarded
connection, ``up()`` listens again on the same port, so tests can cut a broker or a database
and restore it without touching the real server. They live in the lab, not in the tests, because
the lab may not import the tests.
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import threading
from pathlib import Path


class CuttableProxy:
    def __init__(self, target: tuple[str, int] | Path) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()  # open ones only: a benchmark makes many
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _connect_target(self) -> socket.socket:
        if isinstance(self.target, Path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(self.target))
        else:
            sock = socket.create_connection(self.target)
        return sock

    def up(self) -> CuttableProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(socket.SOMAXCONN)  # a burst of clients is not refused
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_target()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select():
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            with self._lock:
                self._conns -= {a, b}
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> CuttableProxy:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


class RoundRobinProxy(CuttableProxy):
    """A stock per-connection round-robin balancer in miniature: each new connection goes to
    the next of ``targets``, with no affinity of any kind. A client that opens a connection per
    request (no keep-alive) so sees every request land on another server."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        super().__init__(targets[0])
        self._next_lock = threading.Lock()
        self.set_targets(targets)

    def set_targets(self, targets: list[tuple[str, int]]) -> None:
        """Servers added or removed from now on (a scale-out, a server taken out)."""
        with self._next_lock:
            self._count = len(targets)
            self._targets = itertools.cycle(targets)

    def _connect_target(self) -> socket.socket:
        """The next server that accepts the connection: one that is down is passed over, as a
        balancer's retry of a failed upstream connect does."""
        error: OSError | None = None
        for _ in range(self._count):
            with self._next_lock:
                target = next(self._targets)
            try:
                upstream = socket.create_connection(target, timeout=2)
            except OSError as refused:
                error = refused
                continue
            upstream.settimeout(None)
            return upstream
        raise error or OSError("no target")

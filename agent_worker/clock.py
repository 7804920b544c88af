"""Clocks: the runtime, the input sources and the declared-latency backends read time and sleep
only through one of these, so the same code runs on wall time or on simulated time.

``WallClock``: real seconds since start. ``VirtualClock``: a discrete-event clock for the streaming
replay (docs/architecture.md#benchmarks) and for tests. Its time moves only when every task of the
loop is waiting on the clock: it then jumps to the earliest sleeper's deadline. Real work the
runtime waits on — a request to the gateway — is wrapped in ``busy()``, and time stands still while
any is in flight, so a real gateway costs no simulated time and the order of events is exactly the
one the declared delays (speech, model profile, injected tool latency) give, on any machine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock started."""

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, at: float) -> None: ...

    def busy(self) -> AbstractAsyncContextManager[None]:
        """Context for real work that must not let simulated time pass."""


class WallClock:
    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._start

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, at: float) -> None:
        await self.sleep(at - self.now())

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        yield


class VirtualClock:
    """Simulated time; use inside ``async with clock.running():``."""

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._busy = 0
        self._kick: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, at: float) -> None:
        if at <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (at, next(self._order), future))
        self._wake()
        await future

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._wake()

    def _wake(self) -> None:
        if self._kick is not None:
            self._kick.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[VirtualClock]:
        self._kick = asyncio.Event()
        driver = asyncio.create_task(self._drive(), name="virtual-clock")
        try:
            yield self
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
            self._kick = None

    async def _drive(self) -> None:
        assert self._kick is not None
        while True:
            self._drop_cancelled()
            if self._busy or not self._sleepers:
                self._kick.clear()
                await self._kick.wait()
                continue
            if not await _loop_idle():
                continue
            if self._busy:
                continue
            self._drop_cancelled()
            if not self._sleepers:
                continue
            at = self._sleepers[0][0]
            self._now = max(self._now, at)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


async def _loop_idle() -> bool:
    """Yield once; True when, back here, no other callback of the loop is ready to run (every
    task waits on a future). Reads the default loop's ready queue; with a loop without one,
    falls back to yielding a good number of times."""
    await asyncio.sleep(0)
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    if ready is None:
        for _ in range(200):
            await asyncio.sleep(0)
        return True
    return len(ready) == 0

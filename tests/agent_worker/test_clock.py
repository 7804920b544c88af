"""The simulated clock: sleepers wake in deadline order at their exact times, and time stands
still while real work (``busy``) is in flight, however long it takes."""

from __future__ import annotations

import asyncio
import time

from agent_worker.clock import VirtualClock, WallClock


def test_sleepers_wake_in_order_at_their_times() -> None:
    async def main() -> list[tuple[str, float]]:
        clock = VirtualClock()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.now()))
            await clock.sleep(seconds)
            woke.append((name + "'", clock.now()))

        async with clock.running():
            await asyncio.gather(sleeper("b", 2.0), sleeper("a", 0.5), sleeper("c", 100.0))
        return woke

    started = time.monotonic()
    woke = asyncio.run(main())
    assert woke == [("a", 0.5), ("a'", 1.0), ("b", 2.0), ("b'", 4.0), ("c", 100.0),
                    ("c'", 200.0)]
    assert time.monotonic() - started < 5  # simulated seconds, not real ones


def test_time_stands_still_while_busy() -> None:
    async def main() -> tuple[float, float]:
        clock = VirtualClock()
        async with clock.running():
            async def work() -> float:
                async with clock.busy():  # a real request: 0.3 s in a thread
                    await asyncio.to_thread(time.sleep, 0.3)
                return clock.now()

            async def tick() -> float:
                await clock.sleep(0.1)
                return clock.now()

            return await asyncio.gather(work(), tick())  # type: ignore[return-value]

    done_at, ticked_at = asyncio.run(main())
    assert done_at == 0.0 and ticked_at == 0.1


def test_wall_clock_moves() -> None:
    clock = WallClock()
    asyncio.run(clock.sleep(0.01))
    assert clock.now() >= 0.01

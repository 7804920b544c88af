"""Running one phase: one thread per session, warm-up, then a measured window for all at once.

Threads rather than asyncio: each session is a closed loop of blocking requests on its own
keep-alive connection, and a blocked thread costs no CPU, which matters on a small machine where
the client shares the cores with the gateway and Postgres. Barriers delimit the measured window,
so no session's warm-up overlaps another's measured calls, and CPU use is sampled at the
window's edges (the window ends after each session's final commit, which is included).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from lab.bench.stats import Phase

Step = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Worker:
    """One session's part of a phase: the timed step, and ``finish`` to leave no turn open
    (run before each barrier: a session waiting there with locks held would stall the rest)."""

    step: Step
    finish: Callable[[], None] = lambda: None


@dataclass
class _Reading:
    """Clock and CPU readings taken by a barrier action, once every session has arrived."""

    server_cpu: Callable[[], float] | None
    worker_cpu: Callable[[], float] | None
    wall: float = 0.0
    client_cpu: float = 0.0
    server: float = 0.0
    worker: float = 0.0

    def take(self) -> None:
        self.wall = time.perf_counter()
        self.client_cpu = time.process_time()
        if self.server_cpu is not None:
            self.server = self.server_cpu()
        if self.worker_cpu is not None:
            self.worker = self.worker_cpu()


class Interrupted(Exception):
    """Another session failed or the user pressed Ctrl-C: stop at the next step."""


def run_phase(name: str, workers: list[Worker], *, calls: int, warmup: int,
              advance: Callable[[], None], stop: threading.Event,
              server_cpu: Callable[[], float] | None = None,
              worker_cpu: Callable[[], float] | None = None) -> Phase:
    """Warm up every session, measure ``calls`` steps per session concurrently, then finish.
    ``server_cpu``/``worker_cpu`` read the CPU seconds of the gateway/tool worker so far."""
    start, end = _Reading(server_cpu, worker_cpu), _Reading(server_cpu, worker_cpu)
    starting = threading.Barrier(len(workers), action=start.take)
    ending = threading.Barrier(len(workers), action=end.take)

    def work(worker: Worker) -> list[float]:
        for _ in range(warmup):
            _check(stop)
            worker.step()
        worker.finish()  # never wait at a barrier with a turn open: it may hold row locks
        starting.wait()
        samples = []
        for _ in range(calls):
            _check(stop)
            samples.append(worker.step())
            advance()
        worker.finish()
        ending.wait()
        return samples

    samples = _run_threads(work, workers, stop, (starting, ending))
    return Phase(scenario=name, sessions=len(workers), samples_s=samples,
                 wall_s=end.wall - start.wall, client_cpu_s=end.client_cpu - start.client_cpu,
                 server_cpu_s=None if server_cpu is None else end.server - start.server,
                 worker_cpu_s=None if worker_cpu is None else end.worker - start.worker)


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise Interrupted


def _run_threads(work: Callable[[Worker], list[float]], workers: list[Worker],
                 stop: threading.Event, barriers: tuple[threading.Barrier, ...]) -> list[float]:
    """Run ``work`` per worker. On the first failure (or Ctrl-C) release the others from the
    barriers and stop them at their next step, then re-raise that first error rather than the
    follow-on ones (a failed session would otherwise leave the rest waiting forever)."""
    with ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="bench") as pool:
        futures = [pool.submit(work, w) for w in workers]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception()), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
        except BaseException:
            stop.set()
            for barrier in barriers:
                barrier.abort()
            raise
        return [sample for future in futures for sample in future.result()]

"""Host CPU as a resource: what the simulated machines spend their cores on besides the devices.

Two models, for the two kinds of machine squishy runs on:
- ``HostPool`` — a GPU server's host cores (a cluster node): per-request work (the frontend's request
  handling, pre- and post-processing) queues first come, first served on ``cores`` cores. Requests
  reach a node in bulk, so the pool serves them in arrival order as they are delivered.
- ``SharedCpu`` — a CPU machine (``squishy serve`` on this box): the execution slots *are* cores, and
  they share them with the server's event loop and, in a benchmark, the load generator. The cores are
  shared max-min fairly among the threads with work (processor sharing, as the kernel's scheduler does on
  average; no thread uses more than one core), so a busy event loop slows the batches down, and busy
  slots slow the event loop down. Python work (the event loop, a slot's batch handling) also needs the
  process's interpreter lock: jobs marked ``gil`` share one lock's worth of time among them, whatever
  the cores (ONNX Runtime's compute releases the lock). Each thread serves its own jobs first come,
  first served.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squishy.sim.engine import Engine

# Remaining work below this many ms counts as done (floating-point dust from rate changes).
DONE_EPSILON_MS = 1e-9


class HostPool:
    """``cores`` cores serving jobs first come, first served: a job starts when it has arrived and a core
    is free (the earliest-free core takes it)."""

    def __init__(self, cores: int) -> None:
        if cores < 1:
            raise ValueError("a host pool needs at least one core")
        self.cores = cores
        self._free_ms = [0.0] * cores  # a heap of the times each core becomes free
        self.busy_ms = 0.0

    def serve(self, arrivals_ms: np.ndarray, work_ms: np.ndarray, latest_start_ms: np.ndarray) -> np.ndarray:
        """Start times of jobs arriving at ``arrivals_ms`` (ascending) that need ``work_ms`` each; NaN for a
        job that could not start by its ``latest_start_ms``: it is answered at once and takes no core
        (a host that kept working on requests already lost would never catch up after an overload)."""
        free = self._free_ms
        starts = np.empty(len(arrivals_ms))
        replace = heapq.heapreplace
        busy = 0.0
        jobs = zip(arrivals_ms.tolist(), work_ms.tolist(), latest_start_ms.tolist(), strict=True)
        for index, (arrival, work, latest) in enumerate(jobs):
            earliest = free[0]
            start = arrival if arrival > earliest else earliest
            if start > latest:
                starts[index] = math.nan
                continue
            replace(free, start + work)
            starts[index] = start
            busy += work
        self.busy_ms += busy
        return starts


@dataclass(order=True)
class _Job:
    release_ms: float
    sequence: int
    work_ms: float = field(compare=False)
    gil: bool = field(compare=False)
    on_start: Callable[..., None] | None = field(compare=False)
    on_done: Callable[..., None] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)


@dataclass(eq=False)
class CpuThread:
    """One thread's jobs, served in order of release (an event loop takes what is due, oldest first); it
    is runnable while a released job is running. A started job runs to its end."""

    name: str
    jobs: list[_Job] = field(default_factory=list)  # a heap by (release, submission order)
    current: _Job | None = None
    remaining_ms: float = 0.0  # of the current job
    busy_ms: float = 0.0  # CPU time used

    @property
    def started(self) -> bool:
        return self.current is not None


class SharedCpu:
    """Processor sharing over ``cores`` cores among threads (``thread``), in simulated time.

    ``submit`` a job to a thread: it starts once the thread's earlier jobs are done and its release time
    has come (``on_start`` is called then), and ``on_done`` is called when its ``work_ms`` of CPU have
    been served. Completions are engine events at ``priority``.
    """

    def __init__(self, engine: Engine, cores: float, priority: int) -> None:
        if cores <= 0:
            raise ValueError("a machine needs cores")
        self.engine = engine
        self.cores = cores
        self.priority = priority
        self.threads: list[CpuThread] = []
        self._last_ms = 0.0
        self._version = 0
        self._event_ms = math.inf
        self._sequence = itertools.count()

    def thread(self, name: str) -> CpuThread:
        created = CpuThread(name)
        self.threads.append(created)
        return created

    def submit(
        self,
        thread: CpuThread,
        work_ms: float,
        on_done: Callable[..., None],
        *args: Any,
        release_ms: float | None = None,
        on_start: Callable[..., None] | None = None,
        gil: bool = False,
    ) -> None:
        now = self.engine.now_ms
        self._advance(now)
        release = now if release_ms is None else max(release_ms, now)
        job = _Job(release, next(self._sequence), max(work_ms, 0.0), gil, on_start, on_done, args)
        heapq.heappush(thread.jobs, job)
        self._start_heads(now)
        self._reschedule(now)

    # ------------------------------------------------------------------------------- internals
    def _runnable(self) -> list[CpuThread]:
        return [t for t in self.threads if t.started]

    def _rates(self, runnable: list[CpuThread]) -> list[float]:
        """Cores per runnable thread, max-min fair: at most one core each, at most ``cores`` in all, and
        the threads running Python (``gil``) one interpreter lock's worth among them."""
        count = len(runnable)
        if count == 0:
            return []
        fair = min(1.0, self.cores / count)
        locked = sum(1 for t in runnable if t.current is not None and t.current.gil)
        if locked == 0 or 1.0 / locked >= fair:
            return [fair] * count
        # The lock binds: its holders get 1/locked each; the others share the cores that leaves.
        free = count - locked
        others = min(1.0, (self.cores - 1.0) / free) if free else 0.0
        return [1.0 / locked if t.current is not None and t.current.gil else others for t in runnable]

    def _advance(self, now: float) -> None:
        """Serve every runnable thread's current job for the time since the last change."""
        elapsed = now - self._last_ms
        self._last_ms = now
        if elapsed <= 0:
            return
        runnable = self._runnable()
        for thread, rate in zip(runnable, self._rates(runnable), strict=True):
            served = elapsed * rate
            thread.remaining_ms -= served
            thread.busy_ms += served

    def _start_heads(self, now: float) -> None:
        for thread in self.threads:
            if thread.current is None and thread.jobs and thread.jobs[0].release_ms <= now:
                job = heapq.heappop(thread.jobs)
                thread.current = job
                thread.remaining_ms = job.work_ms
                if job.on_start is not None:
                    job.on_start(*job.args)

    def _reschedule(self, now: float) -> None:
        runnable = self._runnable()
        next_ms = math.inf
        if runnable:
            rates = self._rates(runnable)
            next_ms = now + min(max(t.remaining_ms, 0.0) / rate for t, rate in zip(runnable, rates, strict=True))
        for thread in self.threads:
            if not thread.started and thread.jobs:
                next_ms = min(next_ms, thread.jobs[0].release_ms)
        if next_ms == self._event_ms:
            return
        self._version += 1
        if next_ms == math.inf:
            self._event_ms = math.inf
            return
        self._event_ms = next_ms
        self.engine.schedule(max(next_ms, now), self.priority, self._event, self._version)

    def _event(self, version: int) -> None:
        if version != self._version:
            return
        now = self.engine.now_ms
        self._event_ms = math.inf
        self._advance(now)
        finished: list[_Job] = []
        for thread in self.threads:
            if thread.current is not None and thread.remaining_ms <= DONE_EPSILON_MS:
                finished.append(thread.current)
                thread.current = None
                thread.remaining_ms = 0.0
        self._start_heads(now)
        self._reschedule(now)
        for job in finished:  # callbacks may submit more work: the state above is consistent
            job.on_done(*job.args)

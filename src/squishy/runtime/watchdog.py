"""The watchdog: a thread that watches the batches in flight on every slot.

Two things can go wrong with a batch once it runs, and neither can be seen from the slot's own thread:
- it is still running when its requests' deadlines pass: each such request is answered then, with an
  error, rather than late (a client that must act within its SLO learns at the deadline, not after);
- it runs far past what its profile predicts (``hang_factor`` × ℓ(inputs), and at least
  ``hang_floor_ms``): the slot is stuck. A thread cannot be killed, so the serving core gives up on it
  (``HangSink.hung``): the slot's other sessions go to a fresh worker, the model is reported unavailable
  with the reason, and the executor is asked to stop the run where it can (ONNX Runtime can).

The bound is a multiple of the profile, not of the SLO: a batch that takes twice its profile on a busy
machine is slow, not stuck, and early drop already accounts for that slowdown.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from squishy.batching import Item
from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.errors import WorkloadError
from squishy.runtime.backend import BatchWatch, RunningBatch, Worker

logger = logging.getLogger(__name__)

# The longest the watchdog sleeps with nothing due: a backstop for a start it was not told of in time.
MAX_SLEEP_S = 0.1


@dataclass(frozen=True)
class HangBound:
    hang_factor: float = 10.0  # a batch running this many times its predicted ℓ(inputs) is stuck
    hang_floor_ms: float = 1000.0  # and never before it has run this long (a short profile is noisy)

    def __post_init__(self) -> None:
        if not (self.hang_factor > 1.0 and self.hang_floor_ms > 0.0):
            raise WorkloadError(
                f"a hang bound needs a factor above 1 and a positive floor, got {self.hang_factor:g} "
                f"and {self.hang_floor_ms:g} ms"
            )

    def bound_ms(self, expected_ms: float) -> float:
        return max(self.hang_factor * expected_ms, self.hang_floor_ms)


class HangSink:
    """What the watchdog reports to (implemented by the serving core)."""

    def overdue(self, batch: RunningBatch, items: Sequence[Item]) -> None:
        """``items`` of a running batch passed their deadline: answer them now (once)."""

    def hung(self, worker: Worker, batch: RunningBatch, ran_ms: float, bound_ms: float) -> None:
        """``worker`` has run ``batch`` for ``ran_ms``, past ``bound_ms``: give up on it."""


class Watchdog(BatchWatch):
    def __init__(
        self,
        workers: Callable[[], Sequence[Worker]],
        sink: HangSink,
        clock: Clock = SYSTEM_CLOCK,
        bound: HangBound | None = None,
        answer_at_deadline: bool = True,
    ) -> None:
        self._workers = workers
        self._sink = sink
        self._clock = clock
        self.bound = bound or HangBound()
        self.answer_at_deadline = answer_at_deadline
        self._condition = threading.Condition()
        self._wake_at_ms = math.inf
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="squishy-watchdog", daemon=True)

    def check(self, now_ms: float) -> float:
        """One look at every slot's batch in flight; returns when the next look is due (inf: none is)."""
        next_ms = math.inf
        for worker in self._workers():
            batch = worker.running
            if batch is None or worker.abandoned:
                continue
            bound_ms = self.bound.bound_ms(batch.expected_ms)
            ran_ms = now_ms - batch.started_ms
            if ran_ms >= bound_ms:
                logger.error(
                    "backend %d: a batch of %d of %s has run %.0f ms, over its bound %.0f ms: giving up on it",
                    worker.index, batch.inputs, batch.slot.session, ran_ms, bound_ms,
                )  # fmt: skip
                self._sink.hung(worker, batch, ran_ms, bound_ms)
                continue
            next_ms = min(next_ms, batch.started_ms + bound_ms)
            if not self.answer_at_deadline:
                continue
            overdue = [item for item in batch.items if item.deadline_ms <= now_ms]
            if overdue:
                self._sink.overdue(batch, overdue)
            pending = [item.deadline_ms for item in batch.items if item.deadline_ms > now_ms]
            if pending:
                next_ms = min(next_ms, min(pending))
        return next_ms

    # ------------------------------------------------------------------------------ the thread
    def started(self, batch: RunningBatch) -> None:
        """A worker started ``batch``: wake the watchdog if it would otherwise look too late. Read without
        the lock on purpose: a missed wake-up costs at most ``MAX_SLEEP_S``, a lock per batch costs more."""
        first_ms = min((item.deadline_ms for item in batch.items), default=math.inf)
        if not self.answer_at_deadline:
            first_ms = batch.started_ms + self.bound.bound_ms(batch.expected_ms)
        if first_ms < self._wake_at_ms:
            with self._condition:
                self._condition.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            now_ms = self._clock.now_ms()
            try:
                next_ms = self.check(now_ms)
            except Exception:  # the watchdog must outlive any one failed look
                logger.exception("watchdog check failed")
                next_ms = math.inf
            sleep_s = min(max((next_ms - now_ms) / 1000.0, 0.0005), MAX_SLEEP_S)
            with self._condition:
                if self._stopping:
                    return
                self._wake_at_ms = now_ms + sleep_s * 1000.0
                self._condition.wait(sleep_s)
                self._wake_at_ms = math.inf

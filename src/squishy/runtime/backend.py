"""One execution slot: a worker thread that takes the backend's turns and runs the batches they choose.

What runs next is decided by the shared backend-turn policy (``squishy.batching.turn``: the duty-cycle
round over the slot's sessions, the sweep of hopeless requests, work stealing within the slot's slack),
the same code the simulator's backends call. This module only owns the thread and the executors.
Workers on one machine share one lock: every queue operation is short, and sharing it lets an idle
worker take a batch from a busy neighbour's queue without lock ordering. A worker that starts a batch
wakes the others (they may now steal from it); executors release the GIL, so workers use several cores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from squishy.batching import Item
from squishy.batching.turn import BackendTurn, Slot, Turn
from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.runtime.api import ModelSpec
from squishy.runtime.executors import Executor, SlotLostError
from squishy.runtime.prefix import PrefixExecutor

logger = logging.getLogger(__name__)

# An idle worker looks at the queues at least this often even if nothing wakes it (a safety net: every
# change that could give it work notifies it).
IDLE_POLL_S = 1.0


@dataclass
class SessionWork:
    """What a slot's session needs to run here (a ``Slot``'s payload)."""

    spec: ModelSpec
    executor: Executor


@dataclass(frozen=True)
class BatchTiming:
    started_ms: float  # when the worker took the batch off the queue
    input_ms: float  # gathering inputs into one batch
    infer_ms: float  # the executor's run
    output_ms: float  # splitting outputs per request

    @property
    def compute_ms(self) -> float:
        return self.input_ms + self.infer_ms + self.output_ms

    @property
    def input_ns(self) -> int:
        return round(self.input_ms * 1e6)

    @property
    def infer_ns(self) -> int:
        return round(self.infer_ms * 1e6)

    @property
    def output_ns(self) -> int:
        return round(self.output_ms * 1e6)


@dataclass(frozen=True)
class RunningBatch:
    """A batch in flight on a worker, as the watchdog sees it."""

    slot: Slot
    items: Sequence[Item]
    executor: Executor
    started_ms: float
    expected_ms: float  # ℓ(inputs) as early drop predicted it when the batch started (observed slowdown in)

    @property
    def inputs(self) -> int:
        return sum(item.size for item in self.items)


class BatchSink:
    """Where a worker reports what happened to each request (implemented by the serving core)."""

    def batch_done(
        self, slot: Slot, items: Sequence[Item], outputs: Sequence[dict[str, np.ndarray]], timing: BatchTiming
    ) -> None: ...

    def batch_failed(self, slot: Slot, items: Sequence[Item], error: BaseException) -> None: ...

    def batch_retried(self, slot: Slot, items: Sequence[Item]) -> None:
        """A batch failed and its requests are about to be run one by one."""

    def dropped(self, slot: Slot, items: Sequence[Item]) -> None: ...

    def slot_lost(self, worker: Worker, slot: Slot, items: Sequence[Item], error: SlotLostError) -> None:
        """The process behind ``worker``'s slot is gone, with ``items`` in flight; the worker stops."""
        self.batch_failed(slot, items, error)


class BatchWatch:
    """Told when a worker starts a batch (implemented by ``squishy.runtime.watchdog.Watchdog``)."""

    def started(self, batch: RunningBatch) -> None: ...


class Worker:
    """One backend of the plan, running in its own thread.

    A worker the watchdog gave up on (``abandoned``: its thread is stuck in a batch) reports nothing more
    and exits when its batch returns; a fresh worker has taken over its turn (``turn``) by then.
    """

    def __init__(
        self,
        index: int,
        sink: BatchSink,
        condition: threading.Condition,
        clock: Clock = SYSTEM_CLOCK,
        *,
        turn: BackendTurn | None = None,
        watch: BatchWatch | None = None,
    ) -> None:
        self.index = index
        self.turn = turn if turn is not None else BackendTurn(index)
        self._sink = sink
        self._clock = clock
        self._condition = condition
        self._watch = watch or BatchWatch()
        self._stopping = False
        self.abandoned = False
        self.running: RunningBatch | None = None
        self._thread = threading.Thread(target=self._run, name=f"squishy-backend-{index}", daemon=True)
        self.spare_executors: dict[str, Executor] = {}  # session → an executor here, for stolen batches

    @property
    def busy(self) -> bool:
        return self.turn.busy

    @property
    def batches_stolen(self) -> int:
        return self.turn.batches_stolen

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if not self.abandoned:  # a stuck thread may never return; it is a daemon
            self._thread.join(timeout_s)

    def _run(self) -> None:
        name_thread(f"squishy-slot-{self.index}")
        while True:
            with self._condition:
                if self._stopping or self.abandoned:
                    return
                now_ms = self._clock.now_ms()
                turn = self.turn.next(now_ms)
                if turn.slot is not None:
                    self.turn.busy = True
                    self.running = self._running(turn, now_ms)
                    self._condition.notify_all()  # idle neighbours may steal from this slot now
                elif turn.fell_back:
                    self._condition.notify_all()  # requests moved to a neighbour's queue
                elif not turn.dropped:
                    self._condition.wait(IDLE_POLL_S)
                    continue
            if self.running is not None:
                self._watch.started(self.running)
            self.report(turn)
            with self._condition:
                if self.abandoned:  # the turn is a fresh worker's now
                    return
                self.running = None
                self.turn.busy = False

    def _running(self, turn: Turn, now_ms: float) -> RunningBatch:
        slot = turn.slot
        assert slot is not None
        work: SessionWork = slot.payload
        executor = self.spare_executors[slot.session] if turn.stolen else work.executor
        inputs = sum(item.size for item in turn.batch)
        return RunningBatch(slot, turn.batch, executor, now_ms, slot.queue.latency_ms(inputs))

    def report(self, turn: Turn) -> None:
        """Answer the turn's drops, then run its batch (if any) and report the outcome."""
        for slot, items in turn.dropped:
            self._sink.dropped(slot, items)
        if turn.slot is None:
            return
        slot = turn.slot
        work: SessionWork = slot.payload
        assert self.running is not None, "a turn with a batch is run only after _run recorded it"
        executor = self.running.executor
        try:
            outputs, timing = run_batch(work.spec, executor, turn.batch, self._clock)
        except SlotLostError as error:  # nothing runs here any more: not worth retrying on this slot
            if not self.abandoned:
                self._sink.slot_lost(self, slot, turn.batch, error)
        except Exception as error:  # an executor failure fails this batch, never the worker
            if self.abandoned:
                return
            if len(turn.batch) > 1:
                logger.warning("backend %d: batch of %s failed (%s); retrying its requests one by one",
                               self.index, slot.session, error)  # fmt: skip
                self._sink.batch_retried(slot, turn.batch)
                self._retry_singly(slot, executor, turn.batch, error)
            else:
                logger.warning("backend %d: request of %s failed: %s", self.index, slot.session, error)
                self._sink.batch_failed(slot, turn.batch, error)
        else:
            if not self.abandoned:
                self._sink.batch_done(slot, turn.batch, outputs, timing)

    def _retry_singly(self, slot: Slot, executor: Executor, items: Sequence[Item], error: BaseException) -> None:
        """A failed batch's requests, each run alone while its deadline allows: an input that makes the
        model raise fails only its own request, not the others batched with it."""
        work: SessionWork = slot.payload
        for position, item in enumerate(items):
            now_ms = self._clock.now_ms()
            expected_ms = slot.queue.latency_ms(item.size)
            if now_ms + expected_ms > item.deadline_ms:
                self._sink.batch_failed(slot, [item], RetryTooLateError(error))
                continue
            self.running = RunningBatch(slot, [item], executor, now_ms, expected_ms)
            self._watch.started(self.running)
            try:
                outputs, timing = run_batch(work.spec, executor, [item], self._clock)
            except SlotLostError as lost:
                if not self.abandoned:
                    self._sink.slot_lost(self, slot, items[position:], lost)
                return
            except Exception as single_error:
                if self.abandoned:
                    return
                self._sink.batch_failed(slot, [item], single_error)
            else:
                if self.abandoned:
                    return
                self._sink.batch_done(slot, [item], outputs, timing)


class RetryTooLateError(Exception):
    """A request of a failed batch that had no time left to be retried alone."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"its batch failed ({error}) and no time was left to retry it alone")


def name_thread(name: str) -> None:
    """Give the calling thread a name the OS shows (``top -H``, ``/proc/<pid>/task/*/comm``); Linux only,
    best effort: operators and the twin's calibration tell the slots' CPU from the event loop's by it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        pr_set_name = 15
        libc.prctl(pr_set_name, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_batch(
    spec: ModelSpec, executor: Executor, items: Sequence[Item], clock: Clock = SYSTEM_CLOCK
) -> tuple[list[dict[str, np.ndarray]], BatchTiming]:
    """Run requests as one batch (or, when their non-batch shapes differ, one batch per shape) and split
    the outputs back per request. Each item's payload has ``request`` (an InferRequest). A prefix group's
    batch runs its trunk once and each member's head on its rows (``PrefixExecutor``)."""
    started_ms = clock.now_ms()
    if isinstance(executor, PrefixExecutor):
        outputs, (input_ms, infer_ms, output_ms) = executor.run_items(items, clock)
        return outputs, BatchTiming(started_ms=started_ms, input_ms=input_ms, infer_ms=infer_ms, output_ms=output_ms)
    input_ms = infer_ms = output_ms = 0.0
    results: list[dict[str, np.ndarray] | None] = [None] * len(items)
    for group in _shape_groups(spec, items):
        t0 = clock.now_ms()
        requests = [items[i].payload.request for i in group]
        wanted = _wanted_outputs(spec, requests)
        if spec.max_batch_size > 0:
            names = list(requests[0].inputs)
            batch_inputs = {
                name: requests[0].inputs[name]
                if len(requests) == 1
                else np.concatenate([r.inputs[name] for r in requests])
                for name in names
            }
        else:
            batch_inputs = dict(requests[0].inputs)
        t1 = clock.now_ms()
        outputs = executor.run(batch_inputs, wanted)
        t2 = clock.now_ms()
        offset = 0
        for index, request in zip(group, requests, strict=True):
            rows = request.batch_size if spec.max_batch_size > 0 else 1
            selected = request.requested_outputs or wanted
            if spec.max_batch_size > 0 and len(group) > 1:
                results[index] = {name: outputs[name][offset : offset + rows] for name in selected}
            else:
                results[index] = {name: outputs[name] for name in selected}
            offset += rows
        t3 = clock.now_ms()
        input_ms += t1 - t0
        infer_ms += t2 - t1
        output_ms += t3 - t2
    timing = BatchTiming(started_ms=started_ms, input_ms=input_ms, infer_ms=infer_ms, output_ms=output_ms)
    return [r if r is not None else {} for r in results], timing


def _shape_groups(spec: ModelSpec, items: Sequence[Item]) -> list[list[int]]:
    """Indices of items that can share one executor call: same non-batch shape for every input."""
    if spec.max_batch_size <= 0:
        return [[i] for i in range(len(items))]
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        inputs = item.payload.request.inputs
        key = tuple((name, array.shape[1:], array.dtype.str) for name, array in inputs.items())
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def _wanted_outputs(spec: ModelSpec, requests: Sequence[Any]) -> list[str]:
    wanted: list[str] = []
    for request in requests:
        for name in request.requested_outputs or [o.name for o in spec.outputs]:
            if name not in wanted:
                wanted.append(name)
    return wanted

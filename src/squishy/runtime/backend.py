"""One execution slot: a worker thread that runs its sessions' batches round-robin, in duty cycles.

Each session the plan puts on this backend has a ``SessionQueue`` (the shared batching policy) and an
executor. The worker visits the sessions in turn and runs at most one batch per session per turn, of
at most the plan's batch size, so every session waits at most one round (≤ the duty cycle) for its
turn. The duty cycle bounds waiting, it does not impose it: a request that finds its backend idle
runs at once. Executors release the GIL, so several workers use several cores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squishy.batching import Item, SessionQueue, SquishyDispatch
from squishy.runtime.api import ModelSpec
from squishy.runtime.executors import Executor

logger = logging.getLogger(__name__)

# A worker with nothing to do re-checks its queues at least this often (ms), to sweep hopeless requests.
IDLE_POLL_MS = 50.0


def now_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass
class SessionSlot:
    """A session (one model version at one SLO) as it runs on one backend."""

    session_id: str
    spec: ModelSpec
    executor: Executor
    batch: int  # the plan's batch size: the most this session runs per turn
    queue: SessionQueue
    dispatch: SquishyDispatch = field(default_factory=SquishyDispatch)


@dataclass(frozen=True)
class BatchTiming:
    started_ms: float  # when the worker took the batch off the queue
    input_ns: int  # gathering inputs into one batch
    infer_ns: int  # the executor's run
    output_ns: int  # splitting outputs per request


class BatchSink:
    """Where a worker reports what happened to each request (implemented by the serving core)."""

    def batch_done(
        self, slot: SessionSlot, items: Sequence[Item], outputs: Sequence[dict[str, np.ndarray]], timing: BatchTiming
    ) -> None: ...

    def batch_failed(self, slot: SessionSlot, items: Sequence[Item], error: BaseException) -> None: ...

    def dropped(self, slot: SessionSlot, items: Sequence[Item]) -> None: ...


class Worker:
    """One backend of the plan, running in its own thread.

    Workers on one machine share one lock (``condition``): every queue operation is short, and sharing
    it lets an idle worker take a batch from a busy neighbour's queue (work stealing) without lock
    ordering. A worker steals only from a busy neighbour, only sessions it has an executor for, and only
    a batch short enough that its own sessions' promises hold: a request of its own arriving meanwhile
    waits at most that batch more, which ``steal_budget_ms`` (the least slack d + ℓ(b) leaves under any
    of its sessions' budgets) must cover. A worker with no sessions of its own may steal anything.
    """

    def __init__(
        self,
        worker_id: int,
        sink: BatchSink,
        clock: Callable[[], float] = now_ms,
        condition: threading.Condition | None = None,
    ) -> None:
        self.worker_id = worker_id
        self._sink = sink
        self._clock = clock
        self._condition = condition if condition is not None else threading.Condition()
        self._slots: list[SessionSlot] = []
        self._by_session: dict[str, SessionSlot] = {}
        self._turn = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"squishy-backend-{worker_id}", daemon=True)
        self.busy = False  # executing a batch right now (for routing, stealing and tests)
        self.peers: list[Worker] = []  # workers sharing ``condition`` that this one may steal from
        self.steal_budget_ms = 0.0  # the longest batch it may steal (0: none)
        self.spare_executors: dict[str, Executor] = {}  # session → an executor here, for stolen batches
        self.batches_stolen = 0

    # ------------------------------------------------------------------------------ control side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout_s)

    @property
    def session_ids(self) -> list[str]:
        with self._condition:
            return [slot.session_id for slot in self._slots]

    def slot(self, session_id: str) -> SessionSlot | None:
        with self._condition:
            return self._by_session.get(session_id)

    def assign(
        self,
        slots: Sequence[SessionSlot],
        steal_budget_ms: float = 0.0,
        spare_executors: dict[str, Executor] | None = None,
    ) -> list[tuple[str, Item]]:
        """Run exactly ``slots`` from now on. A session that stays keeps its queue (with the new batch
        size); the queued requests of sessions that leave are returned so the caller can re-route them.
        A batch in flight finishes first on the old assignment: nothing accepted is lost."""
        with self._condition:
            self.steal_budget_ms = steal_budget_ms
            self.spare_executors = dict(spare_executors or {})
            kept: list[SessionSlot] = []
            for slot in slots:
                current = self._by_session.get(slot.session_id)
                if current is not None:
                    current.batch = slot.batch
                    current.executor = slot.executor
                    current.queue.latency_ms = slot.queue.latency_ms
                    kept.append(current)
                else:
                    kept.append(slot)
            leaving = [s for s in self._slots if s.session_id not in {k.session_id for k in kept}]
            orphans = [(s.session_id, item) for s in leaving for item in s.queue.drain()]
            self._slots = kept
            self._by_session = {s.session_id: s for s in kept}
            self._turn = 0
            self._condition.notify_all()
        return orphans

    def submit(self, session_id: str, item: Item) -> bool:
        """Queue a request; False when it is hopeless already (the caller answers it at once)."""
        with self._condition:
            slot = self._by_session.get(session_id)
            if slot is None:
                raise KeyError(session_id)
            admitted = slot.queue.admit(item, self._clock())
            if admitted:
                self._condition.notify_all()  # the owner, or an idle neighbour that may steal it
            return admitted

    def backlog(self, session_id: str) -> int:
        """Inputs of this session waiting here, plus one while a batch runs: a cheap, lock-free reading
        (each attribute read is atomic) for routing; it may be a moment stale."""
        slot = self._by_session.get(session_id)
        waiting = slot.queue.inputs if slot is not None else 0
        return waiting + (1 if self.busy else 0)

    def queued(self) -> dict[str, int]:
        with self._condition:
            return {slot.session_id: len(slot.queue) for slot in self._slots}

    # ------------------------------------------------------------------------------- worker side
    def _run(self) -> None:
        while True:
            with self._condition:
                if self._stopping:
                    return
                work, swept = self._next_batch()
                if work is None and not swept:
                    self._condition.wait(IDLE_POLL_MS / 1000.0)
                    continue
            for slot, items in swept:
                self._sink.dropped(slot, items)
            if work is not None:
                self._execute(*work)

    def _next_batch(
        self,
    ) -> tuple[tuple[SessionSlot, list[Item], float, Executor] | None, list[tuple[SessionSlot, list[Item]]]]:
        """Under the lock: sweep hopeless requests, then take the next session's batch round-robin; with
        nothing of its own to run, a batch stolen from a busy neighbour."""
        now = self._clock()
        swept: list[tuple[SessionSlot, list[Item]]] = []
        for slot in self._slots:
            gone = slot.queue.sweep(now)
            if gone:
                swept.append((slot, gone))
        count = len(self._slots)
        for step in range(count):
            index = (self._turn + step) % count
            slot = self._slots[index]
            if not slot.dispatch.ready(slot.queue, now, slot.batch):
                continue
            decision = slot.queue.form_batch(now, slot.dispatch.batch_limit(slot.batch))
            if decision.dropped:
                swept.append((slot, decision.dropped))
            if decision.batch:
                self._turn = (index + 1) % count
                return (slot, decision.batch, now, slot.executor), swept
        return self._steal(now, swept), swept

    def _steal(
        self, now: float, swept: list[tuple[SessionSlot, list[Item]]]
    ) -> tuple[SessionSlot, list[Item], float, Executor] | None:
        if self.steal_budget_ms <= 0 or not self.spare_executors:
            return None
        for peer in self.peers:
            if not peer.busy:
                continue  # an idle owner takes its own work when woken
            for slot in peer._slots:
                executor = self.spare_executors.get(slot.session_id)
                if executor is None or len(slot.queue) == 0:
                    continue
                limit = slot.dispatch.batch_limit(slot.batch)
                if slot.queue.latency_ms(min(slot.queue.inputs, limit)) > self.steal_budget_ms:
                    continue
                decision = slot.queue.form_batch(now, limit)
                if decision.dropped:
                    swept.append((slot, decision.dropped))
                if decision.batch:
                    self.batches_stolen += 1
                    return slot, decision.batch, now, executor
        return None

    def _execute(self, slot: SessionSlot, items: list[Item], started_ms: float, executor: Executor) -> None:
        self.busy = True
        try:
            outputs, timing = run_batch(slot.spec, executor, items, started_ms)
        except Exception as error:  # an executor failure fails this batch, never the worker
            logger.exception("backend %d: batch of %s failed", self.worker_id, slot.session_id)
            self._sink.batch_failed(slot, items, error)
        else:
            self._sink.batch_done(slot, items, outputs, timing)
        finally:
            self.busy = False


def run_batch(
    spec: ModelSpec, executor: Executor, items: Sequence[Item], started_ms: float
) -> tuple[list[dict[str, np.ndarray]], BatchTiming]:
    """Run requests as one batch (or, when their non-batch shapes differ, one batch per shape) and split
    the outputs back per request. Each item's payload has ``request`` (an InferRequest)."""
    input_ns = infer_ns = output_ns = 0
    results: list[dict[str, np.ndarray] | None] = [None] * len(items)
    for group in _shape_groups(spec, items):
        t0 = time.perf_counter_ns()
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
        t1 = time.perf_counter_ns()
        outputs = executor.run(batch_inputs, wanted)
        t2 = time.perf_counter_ns()
        offset = 0
        for index, request in zip(group, requests, strict=True):
            rows = request.batch_size if spec.max_batch_size > 0 else 1
            selected = request.requested_outputs or wanted
            if spec.max_batch_size > 0 and len(group) > 1:
                results[index] = {name: outputs[name][offset : offset + rows] for name in selected}
            else:
                results[index] = {name: outputs[name] for name in selected}
            offset += rows
        t3 = time.perf_counter_ns()
        input_ns += t1 - t0
        infer_ns += t2 - t1
        output_ns += t3 - t2
    timing = BatchTiming(started_ms=started_ms, input_ns=input_ns, infer_ns=infer_ns, output_ns=output_ns)
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

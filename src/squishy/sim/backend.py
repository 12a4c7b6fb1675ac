"""Simulated backends: one executor per device running its allocations as the plan says.

A backend with a duty cycle round-robins its allocations, one batch each per turn, skipping those with
nothing to run; a request that finds its backend idle runs at once (the duty cycle bounds the wait, it
does not impose it). A backend without a duty cycle (the batch-oblivious baselines) runs batches first
come, first served: the allocation whose oldest queued request arrived first goes next.

Which requests run together and which are dropped is decided by ``squishy.batching`` (the array form
of the session queue and the dispatch rules), exactly as on a real backend; this module only keeps the
requests that are still on the network (``pending``) and the device's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from squishy.batching.policies import Dispatch
from squishy.batching.queue import ArraySessionQueue
from squishy.scheduler.workload import SessionKey

# Request tags: (query id + 1) << CLASS_BITS | request class. Plain requests have query id -1.
CLASS_BITS = 12
CLASS_MASK = (1 << CLASS_BITS) - 1


@dataclass
class ExecModel:
    """How long a batch takes on the device: ℓ of the padded batch, plus the per-request pre/post
    processing when the system does not overlap it with execution; for a prefix group, the trunk on
    the whole batch plus each member's suffix on its slice."""

    table_ms: np.ndarray  # [n] → mean ms for n plain requests (index 0 unused)
    std_table_ms: np.ndarray  # [n] → std of that batch (zeros when the profile has none)
    # Prefix groups: class index → member slot, and per slot the suffix table over member counts.
    member_slot: dict[int, int] | None = None
    trunk_ms: np.ndarray | None = None  # [n] → trunk ms for n inputs
    suffix_ms: tuple[np.ndarray, ...] = ()  # per member slot: [n] → suffix ms for n inputs
    device_per_request_ms: float = 0.0  # pre + post charged to the device when not overlapped

    def mean_ms(self, count: int, classes: np.ndarray | None) -> float:
        if self.member_slot is None or classes is None:
            return float(self.table_ms[count])
        assert self.trunk_ms is not None
        total = float(self.trunk_ms[count]) + count * self.device_per_request_ms
        slots = self.member_slot
        if classes[0] == classes[-1] and (len(classes) < 3 or bool((classes == classes[0]).all())):
            return total + float(self.suffix_ms[slots[int(classes[0])]][count])
        values, counts = np.unique(classes, return_counts=True)
        for value, n in zip(values.tolist(), counts.tolist(), strict=True):
            total += float(self.suffix_ms[slots[value]][n])
        return total

    @property
    def max_batch(self) -> int:
        return len(self.table_ms) - 1


class AllocationRuntime:
    """One allocation (a session's share) on one backend: its queue, dispatch rule and network buffer."""

    def __init__(
        self, key: SessionKey, batch: int, slo_ms: float, queue: ArraySessionQueue, dispatch: Dispatch, exe: ExecModel
    ) -> None:
        self.key = key
        self.batch = batch  # the plan's batch size: the most this allocation runs per turn
        self.slo_ms = slo_ms  # what the dispatch rule compares batch latencies with
        self.queue = queue
        self.dispatch = dispatch
        self.exe = exe
        self.backend: BackendRuntime | None = None  # set when a backend installs it
        self.single_class = -1  # the only request class routed here, or -1 when several (or none) are
        # Requests routed here that have not arrived yet (network, pre-processing), by arrival time.
        self.pending_arrivals = np.empty(0)
        self.pending_deadlines = np.empty(0)
        self.pending_tags = np.empty(0, dtype=np.int64)
        self.pending_head = 0

    def next_arrival_ms(self) -> float:
        head = self.pending_head
        return float(self.pending_arrivals[head]) if head < len(self.pending_arrivals) else float("inf")

    def add_pending(self, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray) -> None:
        head = self.pending_head
        old = self.pending_arrivals[head:]
        if len(old) == 0:
            self.pending_arrivals, self.pending_deadlines, self.pending_tags = arrivals, deadlines, tags
        else:
            merged_arrivals = np.concatenate((old, arrivals))
            merged_deadlines = np.concatenate((self.pending_deadlines[head:], deadlines))
            merged_tags = np.concatenate((self.pending_tags[head:], tags))
            if arrivals[0] < old[-1]:
                order = np.argsort(merged_arrivals, kind="stable")
                merged_arrivals, merged_deadlines, merged_tags = (
                    merged_arrivals[order],
                    merged_deadlines[order],
                    merged_tags[order],
                )
            self.pending_arrivals, self.pending_deadlines, self.pending_tags = (
                merged_arrivals,
                merged_deadlines,
                merged_tags,
            )
        self.pending_head = 0

    def absorb(self, now_ms: float) -> None:
        """Move requests that have arrived by ``now_ms`` from the network into the queue."""
        head = self.pending_head
        arrivals = self.pending_arrivals
        if head >= len(arrivals) or arrivals[head] > now_ms:
            return
        stop = head + int(arrivals[head:].searchsorted(now_ms, side="right"))
        self.queue.push_many(self.pending_deadlines[head:stop], arrivals[head:stop], self.pending_tags[head:stop])
        self.pending_head = stop

    def take_pending_after(self, time_ms: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return requests that arrive after ``time_ms`` (re-routed when the plan changes)."""
        head = self.pending_head
        arrivals = self.pending_arrivals[head:]
        cut = int(arrivals.searchsorted(time_ms, side="right"))
        out = (arrivals[cut:], self.pending_deadlines[head + cut :], self.pending_tags[head + cut :])
        self.pending_arrivals = arrivals[:cut]
        self.pending_deadlines = self.pending_deadlines[head : head + cut]
        self.pending_tags = self.pending_tags[head : head + cut]
        self.pending_head = 0
        return out

    def drain_all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Everything here: (queued deadlines, arrivals, tags, pending arrivals, deadlines, tags)."""
        deadlines, arrivals, tags = self.queue.drain()
        head = self.pending_head
        pending = (self.pending_arrivals[head:], self.pending_deadlines[head:], self.pending_tags[head:])
        self.pending_arrivals, self.pending_deadlines = np.empty(0), np.empty(0)
        self.pending_tags, self.pending_head = np.empty(0, dtype=np.int64), 0
        return deadlines, arrivals, tags, *pending


@dataclass
class InFlight:
    allocation: AllocationRuntime
    deadlines: np.ndarray
    tags: np.ndarray
    start_ms: float
    finish_ms: float


class BackendRuntime:
    """One device's executor state."""

    def __init__(self, backend_id: int, duty_cycle_ms: float | None, allocations: Sequence[AllocationRuntime]) -> None:
        self.backend_id = backend_id
        self.duty_cycle_ms = duty_cycle_ms
        self.allocations = list(allocations)
        self.round_robin = 0  # the allocation whose turn is next
        self.inflight: InFlight | None = None
        self.wake_ms = float("inf")  # when the pending wake-up event fires (inf: none)
        self.version = 0  # bumps invalidate older wake-up events
        self.retired = False
        self.busy_ms = 0.0

    @property
    def fcfs(self) -> bool:
        return self.duty_cycle_ms is None

    def next_event_ms(self, now_ms: float) -> float:
        """When an idle backend must look again: the next arrival, or a dispatch rule's timeout."""
        best = float("inf")
        for allocation in self.allocations:
            arrival = allocation.next_arrival_ms()
            if arrival < best:
                best = arrival
            if len(allocation.queue):
                wake = allocation.dispatch.wake_at(allocation.queue, now_ms, allocation.batch)
                if wake is not None and wake < best:
                    best = max(wake, now_ms)
        return best

    def choose(self, now_ms: float) -> AllocationRuntime | None:
        """The allocation whose batch runs next (its queue absorbed and ready), or None."""
        allocations = self.allocations
        count = len(allocations)
        if not self.fcfs:
            start = self.round_robin
            for step in range(count):
                index = (start + step) % count
                allocation = allocations[index]
                allocation.absorb(now_ms)
                if len(allocation.queue) and allocation.dispatch.ready(allocation.queue, now_ms, allocation.batch):
                    self.round_robin = (index + 1) % count
                    return allocation
            return None
        chosen: AllocationRuntime | None = None
        oldest = float("inf")
        for allocation in allocations:
            allocation.absorb(now_ms)
            if len(allocation.queue) and allocation.dispatch.ready(allocation.queue, now_ms, allocation.batch):
                arrival = allocation.queue.oldest_arrival_ms()
                if arrival is not None and arrival < oldest:
                    chosen, oldest = allocation, arrival
        return chosen

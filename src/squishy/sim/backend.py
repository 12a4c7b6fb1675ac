"""Simulated backends: the device state around the shared backend-turn policy.

Which session runs next, which requests batch together and which are dropped is decided by
``squishy.batching`` (``BackendTurn`` over ``ArraySessionQueue``s), exactly as on a real backend. This
module holds what only a simulation needs: how long a batch takes on the device (``ExecModel``), the
requests still on the simulated network (a buffer per session share, bulk arrivals only), and the
device's clock (the batch in flight, the pending wake-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from squishy.batching.turn import BackendTurn, Machine, Slot
from squishy.scheduler.workload import SessionKey

# Request tags: (request id + 1) << CLASS_BITS | request class. Requests without a row in the request
# table (plain sessions on the bulk path, whose send time is their deadline minus the SLO) have id -1.
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
        if count >= len(self.table_ms):  # a multi-row request past the profile: linear, as the queue predicts
            return float(self.table_ms[-1]) / (len(self.table_ms) - 1) * count
        if self.member_slot is None or classes is None:
            return float(self.table_ms[count])
        assert self.trunk_ms is not None
        total = float(self.trunk_ms[count]) + count * self.device_per_request_ms
        slots = self.member_slot
        if classes[0] == classes[-1] and (len(classes) < 3 or bool((classes == classes[0]).all())):
            return total + float(self.suffix_ms[slots[int(classes[0])]][count])
        counts = np.bincount(classes)  # class indices are small: cheaper than np.unique, same order
        for value in np.flatnonzero(counts).tolist():
            total += float(self.suffix_ms[slots[value]][counts[value]])
        return total

    def std_ms(self, count: int) -> float:
        return float(self.std_table_ms[min(count, len(self.std_table_ms) - 1)])

    @property
    def max_batch(self) -> int:
        return len(self.table_ms) - 1


class Share:
    """One session's share of one simulated backend (a turn ``Slot``'s payload): its device timing and
    the requests routed to it that are still on the network (bulk arrivals)."""

    def __init__(self, key: SessionKey, slo_ms: float, exe: ExecModel) -> None:
        self.key = key
        self.slo_ms = slo_ms  # what the dispatch rule compares batch latencies with
        self.exe = exe
        self.backend: SimBackend | None = None
        self.single_class = -1  # the only request class routed here, or -1 when several (or none) are
        self.pending_arrivals = np.empty(0)
        self.pending_deadlines = np.empty(0)
        self.pending_tags = np.empty(0, dtype=np.int64)
        self.pending_head = 0
        # The first pending arrival (inf: none), kept as a float: every look at a backend reads it for
        # every share, and indexing the array each time costs more than the rest of the look.
        self.next_ms = float("inf")

    def next_arrival_ms(self) -> float:
        return self.next_ms

    def _update_next(self) -> None:
        head = self.pending_head
        self.next_ms = float(self.pending_arrivals[head]) if head < len(self.pending_arrivals) else float("inf")

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
        self._update_next()

    def absorb(self, slot: Slot, now_ms: float) -> None:
        """Move requests that have arrived by ``now_ms`` from the network into ``slot``'s queue."""
        if self.next_ms > now_ms:
            return
        head = self.pending_head
        arrivals = self.pending_arrivals
        stop = head + int(arrivals[head:].searchsorted(now_ms, side="right"))
        slot.queue.push_many(self.pending_deadlines[head:stop], arrivals[head:stop], self.pending_tags[head:stop])
        self.pending_head = stop
        self._update_next()

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
        self._update_next()
        return out

    def drain_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        head = self.pending_head
        out = (self.pending_arrivals[head:], self.pending_deadlines[head:], self.pending_tags[head:])
        self.pending_arrivals, self.pending_deadlines = np.empty(0), np.empty(0)
        self.pending_tags, self.pending_head = np.empty(0, dtype=np.int64), 0
        self.next_ms = float("inf")
        return out


@dataclass
class InFlight:
    slot: Slot
    batch_deadlines: np.ndarray
    batch_tags: np.ndarray
    inputs: int
    start_ms: float
    duration_ms: float
    finish_ms: float


@dataclass(eq=False)
class SimBackend:
    """One simulated device: the shared turn state plus the device's clock."""

    turn: BackendTurn
    node: SimNode | None = None
    inflight: InFlight | None = None
    wake_ms: float = float("inf")  # when the pending wake-up event fires (inf: none)
    version: int = 0  # bumps invalidate older wake-up events
    retired: bool = False
    loading: bool = False  # a new device loading its models (a capped cluster's re-plan)
    busy_ms: float = 0.0
    timeouts: bool = True  # a dispatch rule may wake it without an arrival (False: none of its rules does)

    def next_event_ms(self, now_ms: float) -> float:
        """When an idle backend must look again: the next arrival on the network, or a dispatch timeout."""
        best = float("inf")
        for slot in self.turn.slots:
            arrival = slot.payload.next_ms
            if arrival < best:
                best = arrival
        if self.timeouts:
            wake = self.turn.wake_at(now_ms)
            if wake is not None and wake < best:
                best = wake
        return best


@dataclass(eq=False)
class SimNode:
    """A machine: backends that see each other's queues (routing by backlog, work stealing)."""

    backends: list[SimBackend] = field(default_factory=list)
    machine: Machine = field(init=False)
    by_turn: dict[int, SimBackend] = field(init=False)  # id of a backend's turn state → the backend

    def __post_init__(self) -> None:
        self.rebuild()

    def rebuild(self) -> None:
        self.machine = Machine([b.turn for b in self.backends])
        self.by_turn = {id(b.turn): b for b in self.backends}
        for backend in self.backends:
            backend.node = self

    def absorb(self, now_ms: float) -> None:
        for backend in self.backends:
            for slot in backend.turn.slots:
                if slot.payload.next_ms <= now_ms:
                    slot.payload.absorb(slot, now_ms)

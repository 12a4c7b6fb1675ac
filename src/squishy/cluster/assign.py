"""From a plan to execution slots: which slot runs which plan backend, and what each slot then runs.

The server and the simulator install plans through this one function, so both put the same sessions
on the same slots, with the same batch limits, routing weights and work-stealing budgets:
- a backend that survives a re-plan stays on its slot; new backends take free slots in index order;
  when a plan has more backends than there are slots (only when not even a sliver of the load fits),
  the extra ones share the least-loaded slot, a session's shares on one slot merging into one;
- each session's batch limit is its burst batch (``batching.limits``), or the plan's batch for
  dispatch rules that do not use it (the baselines);
- routing weights are the plan's rates, summed per slot;
- a slot's steal budget is the least slack d + ℓ(b) leaves under any of its sessions' budgets
  (unbounded for a slot with no sessions).
With ``slot_count`` None (a cluster with as many devices as the plan wants) every backend is its own
slot, numbered by backend id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from squishy.batching.limits import burst_batches
from squishy.scheduler import Allocation, Plan, SessionKey


@dataclass(frozen=True)
class SessionShare:
    """One session's share of one slot."""

    key: SessionKey
    allocation: Allocation  # the plan's allocation (the first, when several backends share the slot)
    batch: int  # the most it runs per turn
    rate: float  # planned requests/s to this slot


@dataclass(frozen=True)
class SlotPlan:
    shares: tuple[SessionShare, ...]
    duty_cycle_ms: float | None  # None: batches run first come, first served
    steal_budget_ms: float


@dataclass(frozen=True)
class Assignment:
    backend_slot: Mapping[int, int]  # plan backend id → slot
    slots: Mapping[int, SlotPlan]  # slot → what it runs (slots the plan leaves idle are absent)

    def routes(self, plan: Plan, model: str, slo_ms: float | None = None) -> list[tuple[int, SessionKey, float]]:
        """Where requests for ``model`` go: (slot, the allocation's key there, rate share), summed per slot."""
        merged: dict[tuple[int, SessionKey], float] = {}
        for backend, allocation, rate in plan.routes(model, slo_ms):
            key = (self.backend_slot[backend.backend_id], allocation.key)
            merged[key] = merged.get(key, 0.0) + rate
        return [(slot, key, rate) for (slot, key), rate in merged.items()]


def map_backends(
    plan: Plan, previous: Mapping[int, int], slot_count: int | None, lost: frozenset[int] = frozenset()
) -> dict[int, int]:
    """Plan backend id → slot, keeping each surviving backend on the slot it had; ``lost`` slots (their
    process died) take none."""
    if slot_count is None:
        return {b.backend_id: b.backend_id for b in plan.backends}
    mapping = {
        b.backend_id: previous[b.backend_id]
        for b in plan.backends
        if b.backend_id in previous and previous[b.backend_id] not in lost
    }
    used = set(mapping.values())
    free = [slot for slot in range(slot_count) if slot not in used and slot not in lost]
    for backend in plan.backends:
        if backend.backend_id in mapping:
            continue
        if free:
            mapping[backend.backend_id] = free.pop(0)
        else:  # more backends than slots: share the least-loaded slot
            usable = [slot for slot in range(slot_count) if slot not in lost] or list(range(slot_count))
            load = {slot: sum(1 for v in mapping.values() if v == slot) for slot in usable}
            mapping[backend.backend_id] = min(load, key=lambda slot: (load[slot], slot))
    return mapping


def assign(
    plan: Plan,
    previous: Mapping[int, int],
    slot_count: int | None,
    latency_ms: Callable[[Allocation, int], float],
    max_batch: Callable[[Allocation], int],
    burst: bool = True,
    lost: frozenset[int] = frozenset(),
) -> Assignment:
    """Place ``plan`` on the slots. ``latency_ms(allocation, b)`` is the scheduled ℓ(b) the plan was made
    with (margins included) and ``max_batch(allocation)`` the largest batch it may run; ``lost`` slots
    are not used."""
    mapping = map_backends(plan, previous, slot_count, lost)
    shares: dict[int, dict[SessionKey, SessionShare]] = {}
    cycles: dict[int, float | None] = {}
    budgets: dict[int, float] = {}
    for backend in plan.backends:
        slot = mapping[backend.backend_id]
        cycle = backend.duty_cycle_ms
        # A slot that also runs a backend without a duty cycle runs first come, first served.
        cycles[slot] = None if cycle is None or (slot in cycles and cycles[slot] is None) else cycle
        slack = min((a.budget_ms - (cycle or 0.0) - a.latency_ms for a in backend.allocations), default=math.inf)
        budgets[slot] = min(budgets.get(slot, math.inf), max(slack, 0.0))
        limits = burst_batches(backend, latency_ms, max_batch) if burst else [a.batch for a in backend.allocations]
        on_slot = shares.setdefault(slot, {})
        for allocation, limit in zip(backend.allocations, limits, strict=True):
            current = on_slot.get(allocation.key)
            if current is None:
                on_slot[allocation.key] = SessionShare(allocation.key, allocation, limit, allocation.rate)
            else:  # two backends of one session on one slot (only when slots are short)
                on_slot[allocation.key] = SessionShare(
                    allocation.key, current.allocation, max(current.batch, limit), current.rate + allocation.rate
                )
    slots = {
        slot: SlotPlan(tuple(on_slot.values()), cycles[slot], budgets.get(slot, math.inf))
        for slot, on_slot in shares.items()
    }
    return Assignment(mapping, slots)

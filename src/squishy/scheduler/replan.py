"""Incremental re-planning: a valid plan for new rates that moves as few sessions as possible.

Moving a session to another backend costs a model load there, so each epoch the scheduler adjusts the
current plan instead of packing from scratch:
- whole backends of a session are kept, released, or added as ⌊R/T⌋ changes; a session that needs one
  more whole backend first takes over a backend where it already runs alone;
- a residual stays where it is with its batch re-sized to the new rate (shrink or grow in place); a
  residual with nowhere to stay takes over one of its session's released whole backends;
- a backend that no longer fits evicts the cheapest session whose leaving makes it fit, and only
  evicted or new residuals are re-packed (best fit);
- backends that empty are released; when the plan needs clearly more backends than packing from
  scratch would, the least-occupied backends are consolidated.
A session counts as moved when it lands on a backend it was not on before.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from squishy.profiles import Profile
from squishy.scheduler.demand import Demand, build_demands, saturating_batch
from squishy.scheduler.packing import (
    Node,
    Share,
    Slot,
    best_fit,
    fit_at,
    longest_cycle_node,
    merge,
    pack,
    residual_node,
    saturate,
)
from squishy.scheduler.plan import Plan
from squishy.scheduler.planner import assemble, node_backend
from squishy.scheduler.workload import SessionKey, Workload

# Consolidate only when the plan uses more than a fresh packing by this many backends, or this share.
CONSOLIDATE_SLACK_BACKENDS = 1
CONSOLIDATE_SLACK_SHARE = 0.05


@dataclass(frozen=True)
class ReplanResult:
    plan: Plan
    moved: tuple[SessionKey, ...]  # sessions placed on a backend they were not on before
    released: tuple[int, ...]  # backend ids the new plan no longer uses
    added: tuple[int, ...]  # backend ids the new plan adds


@dataclass
class _Backend:
    backend_id: int
    node: Node

    @property
    def keys(self) -> set[SessionKey]:
        return {s.demand.key for s in self.node.slots}


def replan(previous: Plan, workload: Workload, profiles: Mapping[str, Profile]) -> ReplanResult:
    demands, split, idle = build_demands(workload, profiles)
    memory = workload.device.memory_mb
    by_key = {d.key: d for d in demands}
    next_id = max((b.backend_id for b in previous.backends), default=-1) + 1

    # The previous plan's backends over the new demands; sessions that left are dropped. Shared
    # backends keep their cycle and (for now) their old rates: they are re-sized below.
    full: dict[SessionKey, list[int]] = defaultdict(list)  # session → backends it saturates
    shared: dict[int, _Backend] = {}  # backends running residuals
    for backend in previous.backends:
        if backend.duty_cycle_ms is None:
            continue  # a baseline plan's backends carry no duty cycle to keep
        slots = tuple(
            Slot(Share(by_key[a.key], a.rate), a.batch, a.latency_ms) for a in backend.allocations if a.key in by_key
        )
        if len(slots) == 1 and _is_full(slots[0], memory):
            full[slots[0].demand.key].append(backend.backend_id)
        elif slots:
            shared[backend.backend_id] = _Backend(backend.backend_id, Node(backend.duty_cycle_ms, slots))

    kept_full: list[_Backend] = []
    pending: list[Node] = []  # residuals to re-pack: each is a move
    moved: set[SessionKey] = set()
    for demand in demands:
        count, full_node, residual = saturate(demand, memory)
        owned = full[demand.key]
        spare = owned[count:]
        kept_full.extend(_Backend(backend_id, _required(full_node)) for backend_id in owned[:count])
        missing = count - min(count, len(owned))
        # Take over backends where this session already runs alone instead of opening new ones.
        for backend in [b for b in shared.values() if b.keys == {demand.key}]:
            if missing == 0:
                break
            del shared[backend.backend_id]
            kept_full.append(_Backend(backend.backend_id, _required(full_node)))
            missing -= 1
        for _ in range(missing):
            kept_full.append(_Backend(next_id, _required(full_node)))
            next_id += 1
            moved.add(demand.key)
        # The residual stays on one shared backend (the first found) and leaves the others.
        homes = [b for b in shared.values() if demand.key in b.keys]
        for index, backend in enumerate(homes):
            keep = residual > 0 and index == 0
            slots = tuple(
                Slot(Share(demand, residual), s.batch, s.latency_ms) if s.demand.key == demand.key else s
                for s in backend.node.slots
                if s.demand.key != demand.key or keep
            )
            backend.node = Node(backend.node.duty_cycle_ms, slots)
        if residual > 0 and not homes:
            node = residual_node(Share(demand, residual), memory)
            if spare:  # a whole backend it no longer needs takes the residual: no move
                backend_id = spare.pop(0)
                shared[backend_id] = _Backend(backend_id, node)
            else:
                pending.append(node)
                moved.add(demand.key)

    # Re-size every shared backend for its new rates; evict until it fits.
    for backend_id in list(shared):
        fitted, evicted = _refit(shared[backend_id].node, memory)
        for slot in evicted:
            pending.append(residual_node(slot.share, memory))
            moved.add(slot.demand.key)
        if fitted is None:
            del shared[backend_id]
        else:
            shared[backend_id].node = fitted

    # Re-pack what has no home, into the shared backends or new ones.
    ids = list(shared)
    nodes = [shared[i].node for i in ids]
    before = len(nodes)
    best_fit(nodes, pending, memory)
    for index, node in enumerate(nodes):
        if index < before:
            shared[ids[index]].node = node
        else:
            shared[next_id] = _Backend(next_id, node)
            next_id += 1

    backends = _consolidate(kept_full + list(shared.values()), demands, memory, moved)
    backends.sort(key=lambda b: b.backend_id)
    plan_backends = [node_backend(b.backend_id, b.node) for b in backends]
    plan = assemble(plan_backends, demands, memory, policy="squishy", query_slo_split=split, idle=idle)
    old_ids = {b.backend_id for b in previous.backends}
    new_ids = {b.backend_id for b in backends}
    old_pairs = {(b.backend_id, a.key) for b, a in previous.allocations()}
    moved.update(a.key for b, a in plan.allocations() if (b.backend_id, a.key) not in old_pairs)
    return ReplanResult(
        plan=plan,
        moved=tuple(sorted(moved)),
        released=tuple(sorted(old_ids - new_ids)),
        added=tuple(sorted(new_ids - old_ids)),
    )


def _is_full(slot: Slot, memory_mb: float | None) -> bool:
    demand = slot.demand
    batch = saturating_batch(demand.profile, demand.budget_ms, memory_mb)
    return batch is not None and slot.rate >= demand.profile.throughput(batch) * (1 - 1e-6)


def _required(node: Node | None) -> Node:
    assert node is not None
    return node


def _refit(node: Node, memory_mb: float | None) -> tuple[Node | None, list[Slot]]:
    """The node re-sized for its slots' new rates (None if it empties), and the slots it evicted."""
    slots = list(node.slots)
    evicted: list[Slot] = []
    while slots:
        fitted = _fit_any_cycle(slots, node.duty_cycle_ms, memory_mb)
        if fitted is not None:
            return fitted, evicted
        # Evict the cheapest slot whose leaving makes the rest fit; else the busiest, and try again.
        for slot in sorted(slots, key=lambda s: s.latency_ms):
            rest = [s for s in slots if s is not slot]
            fitted = _fit_any_cycle(rest, node.duty_cycle_ms, memory_mb) if rest else None
            if fitted is not None or not rest:
                return fitted, [*evicted, slot]
        busiest = max(slots, key=lambda s: s.rate * s.latency_ms / s.batch)
        slots.remove(busiest)
        evicted.append(busiest)
    return None, evicted


def _fit_any_cycle(slots: list[Slot], cycle_ms: float, memory_mb: float | None) -> Node | None:
    """The slots at their current cycle, or at the longest cycle that runs them all."""
    shares = [s.share for s in slots]
    if len(shares) == 1:
        return residual_node(shares[0], memory_mb)
    return fit_at(shares, cycle_ms, memory_mb) or longest_cycle_node(shares, memory_mb)


def _consolidate(
    backends: list[_Backend], demands: list[Demand], memory_mb: float | None, moved: set[SessionKey]
) -> list[_Backend]:
    """Merge the least-occupied backends while the plan is clearly larger than a fresh packing."""
    fresh = len(pack(demands, memory_mb))
    allowed = fresh + max(CONSOLIDATE_SLACK_BACKENDS, math.ceil(CONSOLIDATE_SLACK_SHARE * fresh))
    while len(backends) > allowed:
        candidates = sorted(
            (b for b in backends if not _is_full_node(b.node, memory_mb)), key=lambda b: b.node.occupancy
        )
        for source in candidates:
            best: tuple[float, _Backend, Node] | None = None
            for target in candidates:
                if target is source:
                    continue
                merged = merge(target.node, source.node, memory_mb)
                if merged is not None and (best is None or merged.occupancy > best[0]):
                    best = (merged.occupancy, target, merged)
            if best is not None:
                _, target, merged = best
                target.node = merged
                moved.update(s.demand.key for s in source.node.slots)
                backends = [b for b in backends if b is not source]
                break
        else:
            break  # nothing merges
    return backends


def _is_full_node(node: Node, memory_mb: float | None) -> bool:
    return len(node.slots) == 1 and _is_full(node.slots[0], memory_mb)

"""Squishy bin packing (Nexus, Algorithm 1): place demands onto as few backends as possible.

Units: latencies and duty cycles in ms, rates in requests/s. On a backend with duty cycle d, each
allocation runs one batch of b = ⌈d·r⌉ (rounded up to an allowed size) per cycle, so a request waits at
most d + ℓ(b). A backend is valid when Σℓ(b) ≤ d, d + ℓ(b) ≤ budget for every allocation, and memory fits.

1. Saturate: each demand gets ⌊R/T(B)⌋ whole backends at its largest batch B with 2ℓ(B) ≤ budget.
2. Residual: the remaining rate r gets its cheapest single-backend node (lowest occupancy ℓ(b)/d).
3. Best fit: residual nodes, largest occupancy first, merge into the existing node whose merged
   occupancy is highest; a node that merges nowhere opens a new backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from squishy.scheduler.demand import EPS_MS, Demand, saturating_batch

# Residual rates below this share of a backend's throughput are float noise from R − n·T.
RESIDUAL_EPSILON = 1e-9


@dataclass
class Slot:
    """A demand's share (rate) on a node, with the batch it runs there and that batch's latency."""

    demand: Demand
    rate: float
    batch: int
    latency_ms: float


@dataclass
class Node:
    """A backend under construction: a duty cycle and the slots sharing it."""

    duty_cycle_ms: float
    slots: list[Slot] = field(default_factory=list)

    @property
    def busy_ms(self) -> float:
        return sum(s.latency_ms for s in self.slots)

    @property
    def occupancy(self) -> float:
        return self.busy_ms / self.duty_cycle_ms

    @property
    def memory_mb(self) -> float:
        return sum(s.demand.profile.memory(s.batch) for s in self.slots)


def batch_for(demand: Demand, rate: float, cycle_ms: float) -> int | None:
    """The smallest allowed batch holding the ⌈d·r⌉ requests that arrive in one duty cycle."""
    need = max(1, math.ceil(cycle_ms * rate / 1000.0 - 1e-9))
    return demand.profile.smallest_allowed_at_least(need)


def fit_at(shares: Iterable[tuple[Demand, float]], cycle_ms: float, memory_mb: float | None) -> Node | None:
    """The node running ``shares`` in a duty cycle of ``cycle_ms``, or None if it is not valid."""
    node = Node(cycle_ms)
    busy = 0.0
    memory = 0.0
    for demand, rate in shares:
        batch = batch_for(demand, rate, cycle_ms)
        if batch is None:
            return None
        latency = demand.profile.latency_ms(batch)
        busy += latency
        if busy > cycle_ms + EPS_MS or cycle_ms + latency > demand.budget_ms + EPS_MS:
            return None
        if memory_mb is not None:
            memory += demand.profile.memory(batch)
            if memory > memory_mb + EPS_MS:
                return None
        node.slots.append(Slot(demand, rate, batch, latency))
    return node


def merge(first: Node, second: Node, memory_mb: float | None) -> Node | None:
    """Both nodes' slots in one duty cycle d = min(d1, d2), batches re-sized to d; None if invalid."""
    cycle = min(first.duty_cycle_ms, second.duty_cycle_ms)
    shares = [(s.demand, s.rate) for s in first.slots + second.slots]
    return fit_at(shares, cycle, memory_mb)


def residual_node(demand: Demand, rate: float, memory_mb: float | None) -> Node:
    """The cheapest node that runs ``rate`` of ``demand`` alone.

    For each allowed b the longest usable cycle is d = min(b/r, budget − ℓ(b)): b/r when the batch fills,
    budget − ℓ(b) when the rate is too low to fill it within the budget (batches then run partly full,
    b ≥ d·r still holds). The node with the lowest occupancy ℓ(b)/d wins. This covers the paper's rule
    (largest b with ℓ(b) + b/r ≤ L) and both edge cases it leaves open: a rate close to T(B), where that
    rule gives occupancy above 1 (here the batch B itself yields at most 1), and rates too low for any
    allowed batch to fill within the budget.
    """
    best: Node | None = None
    for batch in demand.profile.allowed_batches:
        latency = demand.profile.latency_ms(batch)
        if 2 * latency > demand.budget_ms + EPS_MS:
            break
        if memory_mb is not None and demand.profile.memory(batch) > memory_mb + EPS_MS:
            continue
        cycle = min(1000.0 * batch / rate, demand.budget_ms - latency)
        if cycle + EPS_MS < latency:
            continue  # this batch cannot keep up with the rate
        if best is None or latency / cycle < best.occupancy - 1e-12:
            # Re-size at that cycle: a partly-filled cycle may need a smaller batch than b.
            best = fit_at([(demand, rate)], cycle, memory_mb)
    if best is None:
        # Unreachable for a residual below T(B): the saturating batch always qualifies.
        raise AssertionError(f"no single-backend node for {demand.key} at {rate} req/s")
    return best


def saturate(demand: Demand, memory_mb: float | None) -> tuple[int, Node | None, float]:
    """(number of whole backends, the node each runs, residual rate)."""
    batch = saturating_batch(demand.profile, demand.budget_ms, memory_mb)
    assert batch is not None, "build_demands rejects infeasible demands"
    latency = demand.profile.latency_ms(batch)
    throughput = 1000.0 * batch / latency
    full = math.floor(demand.rate / throughput + RESIDUAL_EPSILON)
    residual = demand.rate - full * throughput
    if residual <= RESIDUAL_EPSILON * throughput:
        residual = 0.0
    node = Node(latency, [Slot(demand, throughput, batch, latency)]) if full else None
    return full, node, residual


def best_fit(nodes: list[Node], residuals: Sequence[Node], memory_mb: float | None) -> None:
    """Place residual nodes (largest occupancy first) into ``nodes`` by best fit, in place."""
    # Per node: duty cycle, busy ms per cycle, and utilization Σ r·ℓ(b)/b (busy share if batches were
    # exactly full). They give a cheap lower bound on a merge's busy time, so most hopeless merges are
    # rejected without re-sizing batches.
    cycles = [n.duty_cycle_ms for n in nodes]
    busy = [n.busy_ms for n in nodes]
    util = [_utilization(n) for n in nodes]
    for node in sorted(residuals, key=lambda n: -n.occupancy):
        node_util = _utilization(node)
        node_busy = node.busy_ms
        cycle = node.duty_cycle_ms
        best: tuple[float, int, Node] | None = None
        for index in range(len(nodes)):
            # At d = min(d1, d2) the node with the shorter cycle keeps its batches; the other's shrink
            # but each still costs at least d·r·ℓ(b)/b (ℓ(b)/b does not fall as b shrinks).
            if cycles[index] <= cycle:
                bound = busy[index] + cycles[index] * node_util
                merged_cycle = cycles[index]
            else:
                bound = node_busy + cycle * util[index]
                merged_cycle = cycle
            if bound > merged_cycle + EPS_MS:
                continue
            merged = merge(nodes[index], node, memory_mb)
            if merged is not None and (best is None or merged.occupancy > best[0] + 1e-12):
                best = (merged.occupancy, index, merged)
        if best is None:
            nodes.append(node)
            cycles.append(cycle)
            busy.append(node_busy)
            util.append(node_util)
        else:
            _, index, merged = best
            nodes[index] = merged
            cycles[index] = merged.duty_cycle_ms
            busy[index] = merged.busy_ms
            util[index] = _utilization(merged)


def _utilization(node: Node) -> float:
    return sum(s.rate * s.latency_ms / (1000.0 * s.batch) for s in node.slots)


def pack(demands: Sequence[Demand], memory_mb: float | None) -> list[Node]:
    """Squishy bin packing of ``demands``: a list of nodes, one per backend."""
    nodes: list[Node] = []
    residuals: list[Node] = []
    for demand in demands:
        full, node, residual = saturate(demand, memory_mb)
        for _ in range(full):
            assert node is not None
            nodes.append(Node(node.duty_cycle_ms, list(node.slots)))
        if residual > 0:
            residuals.append(residual_node(demand, residual, memory_mb))
    shared: list[Node] = []
    best_fit(shared, residuals, memory_mb)
    return nodes + shared


def lower_bound(demands: Iterable[Demand], memory_mb: float | None) -> float:
    """Σ R/T(B): backends needed if every request ran in a full batch at its best feasible size."""
    total = 0.0
    for demand in demands:
        batch = saturating_batch(demand.profile, demand.budget_ms, memory_mb)
        assert batch is not None
        total += demand.rate * demand.profile.latency_ms(batch) / (1000.0 * batch)
    return total

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

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from squishy.scheduler.demand import EPS_MS, Demand, saturating_batch

# Residual rates below this share of a backend's throughput are float noise from R − n·T.
RESIDUAL_EPSILON = 1e-9


@dataclass(frozen=True, eq=False)
class Share:
    """Part of a demand's rate that must run on one backend, and what any cycle for it must respect."""

    demand: Demand
    rate: float

    @cached_property
    def cap_ms(self) -> float:
        """The longest cycle d with d + ℓ(b(d)) ≤ budget, b(d) the batch d·r needs (0 if there is none).

        d + ℓ(b(d)) grows with d, so the cycles meeting the latency rule are exactly those up to the cap.
        """
        demand, profile = self.demand, self.demand.profile
        allowed = profile.allowed_batches
        for index in range(len(allowed) - 1, -1, -1):
            top = 1000.0 * allowed[index] / self.rate  # the longest cycle this batch holds
            bottom = 1000.0 * allowed[index - 1] / self.rate if index > 0 else 0.0
            limit = demand.budget_ms - profile.latency_ms(allowed[index])
            if limit > bottom:
                return min(top, limit)
        return 0.0

    @cached_property
    def min_busy_ms(self) -> float:
        """ℓ of the smallest allowed batch: every cycle costs at least this much."""
        return self.demand.profile.latency_ms(self.demand.profile.min_batch)

    @cached_property
    def min_utilization(self) -> float:
        """The least busy share of a cycle this share can cost: r·ℓ(b)/b at the batch its cap needs.

        No cycle can exceed the cap, so no batch can exceed b(cap), and ℓ(b)/b only falls as b grows.
        """
        profile = self.demand.profile
        batch = batch_for(self, self.cap_ms) or profile.max_batch
        return self.rate * profile.latency_ms(batch) / batch / 1000.0

    def min_busy_at(self, cycle_ms: float) -> float:
        """A lower bound on ℓ(b(d)) at the cycle d = cycle_ms (for any d up to the cap)."""
        return max(self.min_busy_ms, cycle_ms * self.min_utilization)


@dataclass(frozen=True, eq=False)
class Slot:
    """A share placed on a node, with the batch it runs there and that batch's latency."""

    share: Share
    batch: int
    latency_ms: float

    @property
    def demand(self) -> Demand:
        return self.share.demand

    @property
    def rate(self) -> float:
        return self.share.rate


@dataclass(frozen=True, eq=False)
class Node:
    """A backend under construction: a duty cycle and the slots sharing it."""

    duty_cycle_ms: float
    slots: tuple[Slot, ...]

    @cached_property
    def busy_ms(self) -> float:
        return sum(s.latency_ms for s in self.slots)

    @cached_property
    def occupancy(self) -> float:
        return self.busy_ms / self.duty_cycle_ms if self.duty_cycle_ms else 0.0

    @property
    def shares(self) -> list[Share]:
        return [s.share for s in self.slots]

    # Aggregates that bound any node built from these shares (see ``longest_cycle_node``).
    @cached_property
    def cap_ms(self) -> float:
        return min(s.share.cap_ms for s in self.slots)

    @cached_property
    def min_busy_ms(self) -> float:
        return sum(s.share.min_busy_ms for s in self.slots)

    @cached_property
    def min_utilization(self) -> float:
        return sum(s.share.min_utilization for s in self.slots)

    @cached_property
    def min_busy_at_cap_ms(self) -> float:
        return sum(s.share.min_busy_at(self.cap_ms) for s in self.slots)


def batch_for(share: Share, cycle_ms: float) -> int | None:
    """The smallest allowed batch holding the ⌈d·r⌉ requests that arrive in one duty cycle."""
    need = max(1, math.ceil(cycle_ms * share.rate / 1000.0 - 1e-9))
    return share.demand.profile.smallest_allowed_at_least(need)


def fit_at(shares: Iterable[Share], cycle_ms: float, memory_mb: float | None) -> Node | None:
    """The node running ``shares`` in a duty cycle of ``cycle_ms``, or None if it is not valid."""
    slots = []
    busy = 0.0
    memory = 0.0
    for share in shares:
        batch = batch_for(share, cycle_ms)
        if batch is None:
            return None
        profile = share.demand.profile
        latency = profile.latency_ms(batch)
        busy += latency
        if busy > cycle_ms + EPS_MS or cycle_ms + latency > share.demand.budget_ms + EPS_MS:
            return None
        if memory_mb is not None:
            memory += profile.memory(batch)
            if memory > memory_mb + EPS_MS:
                return None
        slots.append(Slot(share, batch, latency))
    return Node(cycle_ms, tuple(slots))


def merge(first: Node, second: Node, memory_mb: float | None, *, screened: bool = False) -> Node | None:
    """Both nodes' slots on one backend at the longest duty cycle they admit; None if none works.

    Nexus merges at d = min(d1, d2). Searching for the longest cycle that works finds every merge that
    rule finds (if min(d1, d2) works, the longest cycle is at least as long) and more: with batch sizes
    restricted to a sparse set, a cycle between or above d1 and d2 can line every session up with an
    allowed size. A longer cycle also means larger batches, so the merged backend is less occupied.
    ``screened`` skips ``could_merge`` when the caller has already applied it.
    """
    if not screened and not could_merge(first, second):
        return None
    return longest_cycle_node(first.shares + second.shares, memory_mb)


def could_merge(first: Node, second: Node) -> bool:
    """False when no cycle can run both nodes' shares: a cheap test that rejects most merges."""
    cap = min(first.cap_ms, second.cap_ms)
    if cap + EPS_MS < first.min_busy_ms + second.min_busy_ms:
        return False
    if first.min_utilization + second.min_utilization > 1 + 1e-9:
        return False
    return _relaxed_fit(first.shares + second.shares, cap)


def _relaxed_fit(shares: Sequence[Share], cap_ms: float) -> bool:
    """Whether some cycle d ≤ cap could fit, judging each share by a lower bound on its busy time.

    Share j costs at least h_j(d) = max(ℓ_min, d·u_j) at any d ≤ cap. With Σ u_j ≤ 1, Σ h_j(d) − d never
    grows with d, so if the bound fails at the cap it fails at every shorter cycle too.
    """
    return sum(s.min_busy_at(cap_ms) for s in shares) <= cap_ms + EPS_MS


def longest_cycle_node(shares: Sequence[Share], memory_mb: float | None) -> Node | None:
    """The node with the longest duty cycle that runs ``shares``, or None.

    The cycles meeting every latency rule are those up to the smallest cap. Below it, the busy time
    Σℓ(b(d)) is a step function of d that steps down only at batch boundaries 1000·b/r, so the cycle fits
    (busy ≤ d) somewhere in a step iff it fits at the step's right end. The scan walks those ends from
    the cap down, one batch change at a time. It stops early on a bound: at any d' ≤ d a share runs at
    most its batch b(d), whose ms per input ℓ(b)/b is the least it can get there, so its busy time is at
    least max(ℓ_min, d'·r·ℓ(b)/b). When those bounds exceed d (or their slopes sum above 1), no shorter
    cycle can fit either.
    """
    cap = min(s.cap_ms for s in shares)
    floor = sum(s.min_busy_ms for s in shares)
    if cap + EPS_MS < floor:
        return None
    count = len(shares)
    profiles = [share.demand.profile for share in shares]
    rates = [share.rate for share in shares]
    minimum = [share.min_busy_ms for share in shares]
    batches: list[int] = []
    latencies: list[float] = []
    for share, profile in zip(shares, profiles, strict=True):
        batch = batch_for(share, cap)
        if batch is None:
            return None
        batches.append(batch)
        latencies.append(profile.latency_ms(batch))
    boundaries: list[tuple[float, int, int]] | None = None  # (cycle, share index, batch it needs there)
    position = 0
    cycle = cap
    while True:
        slopes = [rates[i] * latencies[i] / batches[i] / 1000.0 for i in range(count)]
        if sum(slopes) > 1 + 1e-9:
            return None
        if sum(max(minimum[i], cycle * slopes[i]) for i in range(count)) > cycle + EPS_MS:
            return None
        if sum(latencies) <= cycle + EPS_MS:
            node = fit_at(shares, cycle, memory_mb)
            if node is not None:
                return node
        if boundaries is None:
            boundaries = []
            for index in range(count):
                allowed = profiles[index].allowed_batches
                lowest = bisect.bisect_left(allowed, floor * rates[index] / 1000.0 - 1e-9)
                highest = bisect.bisect_left(allowed, batches[index])  # strictly below the cap's batch
                boundaries.extend((1000.0 * b / rates[index], index, b) for b in allowed[lowest:highest])
            boundaries.sort(reverse=True)
        if position == len(boundaries):
            return None
        cycle = boundaries[position][0]
        if cycle + EPS_MS < floor:
            return None
        while position < len(boundaries) and boundaries[position][0] == cycle:
            _, index, batch = boundaries[position]
            batches[index] = batch
            latencies[index] = profiles[index].latency_ms(batch)
            position += 1


def residual_node(share: Share, memory_mb: float | None) -> Node:
    """The cheapest node that runs ``share`` alone.

    For each allowed b the longest usable cycle is d = min(b/r, budget − ℓ(b)): b/r when the batch fills,
    budget − ℓ(b) when the rate is too low to fill it within the budget (batches then run partly full,
    b ≥ d·r still holds). The node with the lowest occupancy ℓ(b)/d wins. This covers the paper's rule
    (largest b with ℓ(b) + b/r ≤ L) and both edge cases it leaves open: a rate close to T(B), where that
    rule gives occupancy above 1 (here the batch B itself yields at most 1), and rates too low for any
    allowed batch to fill within the budget.
    """
    demand, rate = share.demand, share.rate
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
            best = fit_at([share], cycle, memory_mb) or best
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
    node = Node(latency, (Slot(Share(demand, throughput), batch, latency),)) if full else None
    return full, node, residual


def best_fit(nodes: list[Node], residuals: Sequence[Node], memory_mb: float | None) -> None:
    """Place residual nodes (largest occupancy first) into ``nodes`` by best fit, in place."""
    # The necessary conditions of ``could_merge``, kept as arrays so one vector operation rules out
    # most existing nodes before any batch is re-sized.
    size = len(nodes) + len(residuals)
    caps, floors, utilizations, busy_at_caps = (np.empty(size) for _ in range(4))

    def record(index: int, node: Node) -> None:
        caps[index], floors[index] = node.cap_ms, node.min_busy_ms
        utilizations[index], busy_at_caps[index] = node.min_utilization, node.min_busy_at_cap_ms

    for index, node in enumerate(nodes):
        record(index, node)
    count = len(nodes)
    for node in sorted(residuals, key=lambda n: -n.occupancy):
        cycle = np.minimum(caps[:count], node.cap_ms)
        # Least busy time of the existing node at the merged cap: exact at its own cap, else bounded.
        existing_busy = np.where(
            caps[:count] <= node.cap_ms, busy_at_caps[:count], np.maximum(floors[:count], cycle * utilizations[:count])
        )
        new_busy = sum(np.maximum(s.share.min_busy_ms, cycle * s.share.min_utilization) for s in node.slots)
        possible = (
            (cycle + EPS_MS >= floors[:count] + node.min_busy_ms)
            & (utilizations[:count] + node.min_utilization <= 1 + 1e-9)
            & (existing_busy + new_busy <= cycle + EPS_MS)
        )
        best: tuple[float, int, Node] | None = None
        for index in np.flatnonzero(possible).tolist():
            merged = merge(nodes[index], node, memory_mb, screened=True)
            if merged is not None and (best is None or merged.occupancy > best[0] + 1e-12):
                best = (merged.occupancy, index, merged)
        if best is None:
            nodes.append(node)
            index, placed = count, node
            count += 1
        else:
            _, index, placed = best
            nodes[index] = placed
        record(index, placed)


def pack(demands: Sequence[Demand], memory_mb: float | None) -> list[Node]:
    """Squishy bin packing of ``demands``: a list of nodes, one per backend."""
    nodes: list[Node] = []
    residuals: list[Node] = []
    for demand in demands:
        full, node, residual = saturate(demand, memory_mb)
        nodes.extend([node] * full if node is not None else [])
        if residual > 0:
            residuals.append(residual_node(Share(demand, residual), memory_mb))
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


def residual_aware_bound(demands: Iterable[Demand], memory_mb: float | None) -> float:
    """A tighter lower bound than Σ R/T(B), valid for every plan under the duty-cycle rules.

    A share of rate r on any backend costs at least f(r), the occupancy of the best single-backend node
    for r (the share's batch and cycle would satisfy the single-backend problem too). f(r)/r never grows
    with r, so splitting a session below T(B) only costs more: a session with R < T(B) needs at least
    f(R) of a backend, one with R ≥ T(B) at least R/T(B). Σ R/T(B) ignores that a small rate cannot fill
    large batches within its SLO; this bound does not, so the gap between a plan and it is packing loss.
    """
    total = 0.0
    for demand in demands:
        batch = saturating_batch(demand.profile, demand.budget_ms, memory_mb)
        assert batch is not None
        full_share = demand.rate * demand.profile.latency_ms(batch) / (1000.0 * batch)
        if full_share >= 1.0:
            total += full_share
        else:
            total += max(full_share, residual_node(Share(demand, demand.rate), memory_mb).occupancy)
    return total

"""The exact optimum for small instances: the yardstick the greedy packing is judged by.

Deliberately independent of ``packing``: it shares no batch-sizing or merge code, so a bug there cannot
hide here. Every session must fit on one backend (rate ≤ T(B)); the optimum is then the fewest blocks
in a partition of the sessions where each block admits some duty cycle d with Σℓ(b_j) ≤ d,
d + ℓ(b_j) ≤ budget_j, b_j ≥ d·r_j and memory within capacity.

Which d to try: for fixed batches, the feasible d form an interval whose upper end is either a batch
boundary 1000·b/r_j (beyond it b_j must grow) or a latency limit budget_j − ℓ_j(b). So if any d works,
one of those candidates works, and checking them all is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

from squishy.scheduler.demand import Demand

TOLERANCE_MS = 1e-6


def block_cycle(demands: Sequence[Demand], memory_mb: float | None = None) -> float | None:
    """The longest duty cycle that runs all ``demands`` (full rates) on one backend, or None."""
    candidates: set[float] = set()
    for demand in demands:
        for batch in demand.profile.allowed_batches:
            candidates.add(1000.0 * batch / demand.rate)
            candidates.add(demand.budget_ms - demand.profile.latency_ms(batch))
    for cycle in sorted((c for c in candidates if c > 0), reverse=True):
        if _runs(demands, cycle, memory_mb):
            return cycle
    return None


def _runs(demands: Sequence[Demand], cycle: float, memory_mb: float | None) -> bool:
    busy = 0.0
    memory = 0.0
    for demand in demands:
        need = math.ceil(cycle * demand.rate / 1000.0 - 1e-9)
        fitting = [b for b in demand.profile.allowed_batches if b >= need]
        if not fitting:
            return False
        batch = fitting[0]
        latency = demand.profile.latency_ms(batch)
        if cycle + latency > demand.budget_ms + TOLERANCE_MS:
            return False
        busy += latency
        memory += demand.profile.memory(batch)
    if memory_mb is not None and memory > memory_mb + TOLERANCE_MS:
        return False
    return busy <= cycle + TOLERANCE_MS


def optimal_backends(demands: Sequence[Demand], memory_mb: float | None = None) -> int:
    """The fewest backends for ``demands`` when no session is split (exhaustive; keep n ≤ ~10)."""
    n = len(demands)
    if n > 12:
        raise ValueError("the exact optimum is exponential; use it on 12 sessions or fewer")
    feasible = {}
    for mask in range(1, 1 << n):
        members = [demands[i] for i in range(n) if mask >> i & 1]
        feasible[mask] = block_cycle(members, memory_mb) is not None
    for i in range(n):
        if not feasible[1 << i]:
            raise ValueError(f"session {demands[i].key} does not fit on one backend alone")

    @cache
    def best(mask: int) -> int:
        if mask == 0:
            return 0
        lowest = mask & -mask
        rest = mask ^ lowest
        result = n
        sub = rest
        while True:  # every block that contains the lowest session
            block = sub | lowest
            if feasible[block]:
                result = min(result, 1 + best(mask ^ block))
            if sub == 0:
                break
            sub = (sub - 1) & rest
        return result

    return best((1 << n) - 1)

"""An independent check of a plan against the rules of the packing (used by the property tests)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from squishy.scheduler import Plan
from squishy.scheduler.demand import Demand

TOLERANCE_MS = 1e-6


def violations(plan: Plan, demands: Sequence[Demand], memory_mb: float | None) -> list[str]:
    """Everything wrong with ``plan`` for ``demands``; an empty list means the plan is valid."""
    problems: list[str] = []
    by_key = {d.key: d for d in demands}
    allocated: dict[object, float] = defaultdict(float)
    for backend in plan.backends:
        cycle = backend.duty_cycle_ms
        where = f"backend {backend.backend_id}"
        if cycle is None:
            problems.append(f"{where}: squishy plans always have a duty cycle")
            continue
        busy = 0.0
        memory = 0.0
        for a in backend.allocations:
            demand = by_key.get(a.key)
            if demand is None:
                problems.append(f"{where}: {a.key} is not a session of the workload")
                continue
            allocated[a.key] += a.rate
            if a.batch not in demand.profile.allowed_batches:
                problems.append(f"{where}: {a.key} runs batch {a.batch}, which its profile does not allow")
                continue
            latency = demand.profile.latency_ms(a.batch)
            if abs(latency - a.latency_ms) > TOLERANCE_MS:
                problems.append(f"{where}: {a.key} claims ℓ({a.batch}) = {a.latency_ms}, profile says {latency}")
            busy += latency
            memory += demand.profile.memory(a.batch)
            if cycle + latency > demand.budget_ms + TOLERANCE_MS:
                problems.append(f"{where}: {a.key}: d + ℓ(b) = {cycle + latency} > budget {demand.budget_ms}")
            if a.batch + 1e-9 < cycle * a.rate / 1000.0:
                problems.append(f"{where}: {a.key}: batch {a.batch} < d·r = {cycle * a.rate / 1000.0}")
            if a.rate <= 0:
                problems.append(f"{where}: {a.key} has a non-positive rate {a.rate}")
        if busy > cycle + TOLERANCE_MS:
            problems.append(f"{where}: Σℓ(b) = {busy} > duty cycle {cycle}")
        if memory_mb is not None and memory > memory_mb + 1e-6:
            problems.append(f"{where}: memory {memory} MB > capacity {memory_mb} MB")
    for demand in demands:
        got = allocated.get(demand.key, 0.0)
        if abs(got - demand.rate) > 1e-6 * max(1.0, demand.rate):
            problems.append(f"{demand.key}: allocated {got} req/s, demand is {demand.rate}")
    if plan.num_backends + 1e-9 < plan.lower_bound:
        problems.append(f"{plan.num_backends} backends is below the lower bound {plan.lower_bound}")
    return problems

"""The batch-oblivious allocation that Nexus compares against (Clipper and TF-Serving run on it).

Each session gets a device share proportional to R ÷ its best single-device throughput T(B); whole
devices go to the session, and the fractional remainders are packed first-fit-decreasing onto devices
of capacity 1. Sessions that share a device run without a duty cycle (batches first come, first served),
so the plan says ``duty_cycle_ms = None``; the batch recorded is B, the largest batch the SLO allows,
which the executing system (AIMD or a fixed batch) may use less of. Counting these backends flatters the
baseline: judge it by throughput at the SLO in the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from squishy.scheduler.demand import Demand, saturating_batch
from squishy.scheduler.packing import RESIDUAL_EPSILON, Share, Slot


def batch_oblivious_nodes(demands: Sequence[Demand], memory_mb: float | None) -> list[tuple[list[Slot], float]]:
    """(slots, share of the device used) per device; each slot's rate is its share of the session."""
    whole: list[tuple[list[Slot], float]] = []
    pieces: list[tuple[float, Slot]] = []
    for demand in demands:
        batch = saturating_batch(demand.profile, demand.budget_ms, memory_mb)
        assert batch is not None
        latency = demand.profile.latency_ms(batch)
        throughput = 1000.0 * batch / latency
        share = demand.rate / throughput
        full = math.floor(share + RESIDUAL_EPSILON)
        for _ in range(full):
            whole.append(([Slot(Share(demand, throughput), batch, latency)], 1.0))
        rest = share - full
        if rest > RESIDUAL_EPSILON:
            pieces.append((rest, Slot(Share(demand, rest * throughput), batch, latency)))
    bins: list[tuple[list[Slot], float]] = []
    for share, slot in sorted(pieces, key=lambda p: -p[0]):
        memory = slot.demand.profile.memory(slot.batch)
        for index, (slots, used) in enumerate(bins):
            used_memory = sum(s.demand.profile.memory(s.batch) for s in slots)
            if used + share <= 1 + 1e-9 and (memory_mb is None or used_memory + memory <= memory_mb):
                bins[index] = ([*slots, slot], used + share)
                break
        else:
            bins.append(([slot], share))
    return whole + bins

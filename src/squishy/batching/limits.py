"""How large a batch a session may run in one turn when its queue is longer than the plan expected.

The plan gives session i a batch b_i per duty cycle d; every session's worst case is d + ℓ(b_j) ≤ L_j.
When load runs ahead of the plan (a burst, or the seconds before the next re-plan) the queue holds more
than b_i, and running only b_i per turn leaves the backend too slow to catch up. A larger batch c is
safe as long as every promise still holds with c in place of ℓ(b_i) in the round:
- another session j waits at most (d − ℓ(b_i) + c) + ℓ(b_j) ≤ L_j, so c ≤ ℓ(b_i) + (L_j − d − ℓ(b_j));
- session i's own next request may wait for this turn and the rest of the round and then ride another
  turn of the same size: 2c + d − ℓ(b_i) ≤ L_i.
On a backend of its own a session may thus grow to L_i/2 of latency (the largest b with 2ℓ(b) ≤ L_i),
exactly the saturating batch. Early drop still checks every window against its requests' deadlines.
"""

from __future__ import annotations

from collections.abc import Callable

from squishy.scheduler.plan import Allocation, Backend

LatencyFn = Callable[[Allocation, int], float]  # (allocation, batch) → scheduled ℓ in ms; inf if not allowed


def burst_batches(backend: Backend, latency_ms: LatencyFn, max_batch: Callable[[Allocation], int]) -> list[int]:
    """Per allocation (in the backend's order), the largest batch it may run in one turn; at least its
    planned batch."""
    limits: list[int] = []
    cycle = backend.duty_cycle_ms
    for allocation in backend.allocations:
        if cycle is None:  # no duty cycle, no promise to keep: the plan's batch
            limits.append(allocation.batch)
            continue
        own = (allocation.budget_ms - cycle + allocation.latency_ms) / 2.0
        others = min(
            (other.budget_ms - cycle - other.latency_ms for other in backend.allocations if other is not allocation),
            default=float("inf"),
        )
        ceiling = min(own, allocation.latency_ms + max(others, 0.0))
        batch = allocation.batch
        for candidate in range(allocation.batch + 1, max_batch(allocation) + 1):
            if latency_ms(allocation, candidate) > ceiling + 1e-9:
                break
            batch = candidate
        limits.append(batch)
    return limits

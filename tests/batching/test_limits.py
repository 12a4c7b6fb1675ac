"""Burst batch limits: how far a session may grow its batch without breaking anyone's promise."""

from __future__ import annotations

from squishy.batching.limits import burst_batches
from squishy.scheduler import Allocation, Backend


def linear(allocation: Allocation, batch: int) -> float:
    return 10.0 + 5.0 * batch  # ℓ(1) = 15, ℓ(4) = 30, ℓ(8) = 50 ms


def test_a_session_alone_may_grow_to_its_saturating_batch():
    # SLO 120 ms: the largest b with 2ℓ(b) ≤ 120 is 10 (ℓ = 60), whatever the plan's batch.
    backend = Backend(0, 15.0, (Allocation("m", 120, 10.0, 1, 15.0, 120.0),))
    assert burst_batches(backend, linear, lambda m: 64) == [10]


def test_shared_backends_grow_only_into_the_other_sessions_slack():
    # d = 100: a runs b=2 (20 ms), budget 200; b runs b=4 (30 ms), budget 140: b's slack is 140-100-30 = 10.
    a = Allocation("a", 200, 20.0, 2, 20.0, 200.0)
    b = Allocation("b", 140, 40.0, 4, 30.0, 140.0)
    limits = burst_batches(Backend(0, 100.0, (a, b)), linear, lambda m: 64)
    # a: ≤ min((200 - 100 + 20)/2 = 60, 20 + 10 = 30) → ℓ(b) ≤ 30 → batch 4.
    # b: ≤ min((140 - 100 + 30)/2 = 35, 30 + (200 - 100 - 20) = 110) → ℓ ≤ 35 → batch 5.
    assert limits == [4, 5]


def test_no_duty_cycle_means_the_plans_batch():
    backend = Backend(0, None, (Allocation("m", 120, 10.0, 3, 25.0, 120.0),))
    assert burst_batches(backend, linear, lambda m: 64) == [3]

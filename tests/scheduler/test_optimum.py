"""The greedy packing against the exact optimum on small instances (every partition of ≤ 7 sessions).

The instances come from ``squishy.scheduler.instances``; ``benchmarks/bench_scheduler.py --part optimum``
prints the figures for the same ones.
"""

from __future__ import annotations

import random
import statistics

from squishy.profiles import Profile
from squishy.scheduler.demand import Demand
from squishy.scheduler.instances import COUNT, SEED, random_instance
from squishy.scheduler.optimum import block_cycle, optimal_backends
from squishy.scheduler.packing import pack


def test_greedy_is_close_to_the_optimum():
    rng = random.Random(SEED)
    ratios, excess = [], []
    for _ in range(COUNT):
        demands = random_instance(rng)
        greedy = len(pack(demands, None))
        best = optimal_backends(demands)
        assert greedy >= best
        ratios.append(greedy / best)
        excess.append(greedy - best)
    assert statistics.mean(ratios) <= 1.1
    assert max(excess) <= 1


def test_optimum_finds_the_papers_zero_slack_pairing():
    """A at batch 8 and B at batch 4 fit one 125 ms cycle exactly; C cannot join them."""
    a = Profile.from_dict({"model": "A", "batch_ms": {"4": 50, "8": 75, "16": 100}})
    b = Profile.from_dict({"model": "B", "batch_ms": {"4": 50, "8": 90, "16": 125}})
    c = Profile.from_dict({"model": "C", "batch_ms": {"4": 60, "8": 95, "16": 125}})
    da, db, dc = Demand("A", 200, 200, 64, a), Demand("B", 250, 250, 32, b), Demand("C", 250, 250, 32, c)
    assert block_cycle([da, db]) == 125.0
    assert block_cycle([da, dc]) is None
    assert optimal_backends([da, db, dc]) == 2


def test_residual_aware_bound_never_exceeds_the_optimum():
    from squishy.scheduler.packing import residual_aware_bound

    rng = random.Random(7)
    for _ in range(150):
        demands = random_instance(rng)
        assert residual_aware_bound(demands, None) <= optimal_backends(demands) + 1e-9

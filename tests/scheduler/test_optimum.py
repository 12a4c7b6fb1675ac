"""The greedy packing against the exact optimum on small instances (every partition of ≤ 7 sessions)."""

from __future__ import annotations

import random
import statistics

from squishy.profiles import Profile
from squishy.scheduler.demand import Demand, saturating_batch
from squishy.scheduler.optimum import block_cycle, optimal_backends
from squishy.scheduler.packing import pack

INSTANCES = 300


def random_profile(rng: random.Random, name: str) -> Profile:
    kind = rng.random()
    if kind < 0.4:  # restricted, linear
        alpha, beta = rng.uniform(0.5, 10), rng.uniform(1, 30)
        batches = sorted(rng.sample([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64], rng.randint(2, 8)))
        return Profile.from_dict({"model": name, "batch_ms": {str(b): alpha * b + beta for b in batches}})
    if kind < 0.7:  # sub-linear, GPU-like
        table = {str(b): rng.uniform(5, 20) * b ** rng.uniform(0.5, 1.0) for b in (1, 2, 4, 8, 16, 32)}
        return Profile.from_dict({"model": name, "batch_ms": table})
    return Profile.linear(name, rng.uniform(0.5, 10), rng.uniform(1, 30), max_batch=rng.choice([8, 16, 32, 64]))


def random_instance(rng: random.Random) -> list[Demand]:
    demands = []
    for i in range(rng.randint(2, 7)):
        profile = random_profile(rng, f"m{i}")
        slo = 2 * profile.latency_ms(profile.min_batch) * rng.uniform(1.0, 6.0)
        throughput = profile.throughput(saturating_batch(profile, slo, None))
        # Residual-sized rates: each session fits one backend, so packing is all that matters.
        share = rng.choice([rng.uniform(0.02, 0.3), rng.uniform(0.15, 0.6), rng.uniform(0.3, 1.0)])
        demands.append(Demand(f"m{i}", slo, slo, throughput * share, profile))
    return demands


def test_greedy_is_close_to_the_optimum():
    rng = random.Random(20191027)
    ratios, excess = [], []
    for _ in range(INSTANCES):
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

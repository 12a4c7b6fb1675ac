"""Random small planning instances: the workloads the greedy packing is judged against the exact optimum on.

One generator shared by ``tests/scheduler/test_optimum.py`` and ``benchmarks/bench_scheduler.py --part
optimum``, so the test and the benchmark see the same instances. An instance is 2–7 demands, each its own
model with a random profile (restricted batch sizes with a linear curve, a sub-linear GPU-like curve, or a
plain linear one), an SLO of 2–12× its smallest batch's latency, and a rate of at most one backend's
throughput: every session fits one backend, so only the packing decides the backend count.

``optimal_backends`` is exhaustive, so keep instances this small. The sequence of instances depends only
on the seed and on the order of calls: changing the draws here changes every figure quoted from them.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from squishy.profiles import Profile
from squishy.scheduler.demand import Demand, saturating_batch

if TYPE_CHECKING:
    from squishy.scheduler.variants import Task

# The seed and count of the instances the test asserts on and the docs quote.
SEED = 20191027
COUNT = 300
# The same for the variant-choice instances (``random_variant_instance``).
VARIANT_SEED = 20160626
VARIANT_COUNT = 100


def random_profile(rng: random.Random, name: str) -> Profile:
    """A profile for model ``name``: 40% restricted batch sets, 30% sub-linear, 30% linear."""
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
    """2–7 demands (models ``m0``, ``m1``, ...), each with a rate that one backend can carry."""
    demands = []
    for i in range(rng.randint(2, 7)):
        profile = random_profile(rng, f"m{i}")
        slo = 2 * profile.latency_ms(profile.min_batch) * rng.uniform(1.0, 6.0)
        throughput = profile.throughput(saturating_batch(profile, slo, None))
        # Residual-sized rates: each session fits one backend, so packing is all that matters.
        share = rng.choice([rng.uniform(0.02, 0.3), rng.uniform(0.15, 0.6), rng.uniform(0.3, 1.0)])
        demands.append(Demand(f"m{i}", slo, slo, throughput * share, profile))
    return demands


def random_variant_instance(rng: random.Random) -> tuple[list[Task], dict[str, Profile], int]:
    """2–6 tasks of 4 variants each, and a budget of backends between what the cheapest variants need and
    one less than what the most accurate need (so the choice matters). Variant j of task i is ``t{i}v{j}``:
    j = 0 is the most accurate; each next one costs 40–80% of the one before and loses 0.5–6 points."""
    from squishy.scheduler.variants import Task, Variant, cheapest_needs, most_accurate_needs

    while True:
        tasks, profiles = [], {}
        for i in range(rng.randint(2, 6)):
            base = random_profile(rng, f"t{i}v0")
            slo = 2 * base.latency_ms(base.min_batch) * rng.uniform(1.0, 6.0)
            throughput = base.throughput(saturating_batch(base, slo, None))
            accuracy, scale, variants = rng.uniform(0.75, 0.98), 1.0, []
            for j in range(4):
                name = f"t{i}v{j}"
                profiles[name] = replace(base, model=name, batch_ms={b: scale * v for b, v in base.batch_ms.items()})
                variants.append(Variant(name, round(accuracy, 4)))
                accuracy -= rng.uniform(0.005, 0.06)
                scale *= rng.uniform(0.4, 0.8)
            tasks.append(Task(f"t{i}", slo, throughput * rng.uniform(0.2, 2.5), tuple(variants)))
        low, high = cheapest_needs(tasks, profiles), most_accurate_needs(tasks, profiles)
        if high > low:
            return tasks, profiles, rng.randint(low, high - 1)

"""Variants under a budget of backends: the policy against the exact best choice, degrade before drop,
accuracy floors, and the errors a user sees.

The random instances come from ``squishy.scheduler.instances``; ``benchmarks/bench_variants.py --part
optimum`` prints the figures for the same ones.
"""

from __future__ import annotations

import random

import pytest

from squishy.errors import InfeasibleError, WorkloadError
from squishy.profiles import Profile
from squishy.scheduler.instances import VARIANT_COUNT, VARIANT_SEED, random_variant_instance
from squishy.scheduler.variants import (
    Task,
    Variant,
    best_fixed_variant,
    cheapest_needs,
    choose_variants,
    frontier,
    most_accurate_needs,
)
from squishy.scheduler.variants_optimum import best_choice, occupancy_bound
from squishy.scheduler.workload import Settings


def test_the_policy_is_within_a_point_of_the_exact_best_choice():
    """One variant per task (no split) against the exact best such choice; splitting a task's rate between
    two variants only adds accuracy, and stays under the LP bound that covers splits."""
    rng = random.Random(VARIANT_SEED)
    gaps = []
    for _ in range(VARIANT_COUNT):
        tasks, profiles, budget = random_variant_instance(rng)
        chosen = choose_variants(tasks, profiles, budget, split=False)
        assert len(chosen.plan.backends) <= budget
        assert chosen.shed_rate == 0  # the budget covers the cheapest variants, so nothing is shed
        exact = best_choice(tasks, profiles, budget)
        assert exact is not None
        bound = occupancy_bound(tasks, profiles, budget)
        assert bound is not None and exact[0] <= bound + 1e-9 and chosen.delivered_accuracy <= exact[0] + 1e-9
        gaps.append(exact[0] - chosen.delivered_accuracy)
        fixed = best_fixed_variant(tasks, profiles, budget)
        assert fixed is None or chosen.delivered_accuracy >= fixed.delivered_accuracy - 1e-9
        split = choose_variants(tasks, profiles, budget)
        relaxed = occupancy_bound(tasks, profiles, budget, split=True)
        assert len(split.plan.backends) <= budget and relaxed is not None
        assert chosen.delivered_accuracy - 1e-9 <= split.delivered_accuracy <= relaxed + 1e-9
    assert max(gaps) <= 0.01  # percentage points of delivered accuracy, in the worst case
    assert sum(gap < 1e-9 for gap in gaps) >= 0.8 * len(gaps)  # and most often exactly the best


def ladder(task: str, slo_ms: float, rate: float, *rungs: tuple[float, float], floor: float = 0.0):
    """A task whose variant i costs ``rungs[i][0]`` ms per request (linear ℓ, no fixed cost) at accuracy
    ``rungs[i][1]``, with its profiles."""
    variants, profiles = [], {}
    for index, (per_request_ms, accuracy) in enumerate(rungs):
        model = f"{task}-{index}"
        profiles[model] = Profile.linear(model, per_request_ms, 0.0, max_batch=64)
        variants.append(Variant(model, accuracy))
    return Task(task, slo_ms, rate, tuple(variants), accuracy_floor=floor), profiles


def test_overload_degrades_the_cheapest_accuracy_first_and_drops_nothing():
    # a loses 1 point for halving its cost, b loses 10 points for the same saving: a degrades first.
    a, profiles_a = ladder("a", 100.0, 400.0, (10.0, 0.90), (5.0, 0.89))
    b, profiles_b = ladder("b", 100.0, 400.0, (10.0, 0.90), (5.0, 0.80))
    profiles = profiles_a | profiles_b
    full = most_accurate_needs([a, b], profiles)
    assert full == 8  # 400/s × 10 ms = 4 backends each
    plan = choose_variants([a, b], profiles, 6)
    assert plan.chosen == {"a": a.variants[1], "b": b.variants[0]}
    assert plan.shed_rate == 0 and plan.degraded == ("a",)
    assert plan.delivered_accuracy == pytest.approx((0.89 + 0.90) / 2)


def test_beyond_the_cheapest_variants_every_task_is_shed_alike():
    a, profiles = ladder("a", 100.0, 400.0, (10.0, 0.90), (5.0, 0.89))
    assert cheapest_needs([a], profiles) == 2
    plan = choose_variants([a], profiles, 1)
    assert plan.chosen["a"] == a.variants[1]
    assert plan.served_rate["a"] == pytest.approx(200.0, rel=0.02)  # one backend at 5 ms per request
    assert len(plan.plan.backends) == 1
    assert plan.delivered_accuracy == pytest.approx(0.89 * plan.served_rate["a"] / 400.0)
    assert plan.notes and "exceeds the budget" in plan.notes[0]


def test_an_accuracy_floor_sheds_rather_than_degrades():
    a, profiles = ladder("a", 100.0, 400.0, (10.0, 0.90), (5.0, 0.70), floor=0.85)
    plan = choose_variants([a], profiles, 2)
    assert plan.chosen["a"] == a.variants[0]  # the 70% variant is below the floor
    assert plan.served_rate["a"] == pytest.approx(200.0, rel=0.02)
    assert plan.served_accuracy == pytest.approx(0.90)


def test_dominated_variants_are_never_on_the_ladder():
    a, profiles = ladder("a", 100.0, 10.0, (10.0, 0.90), (12.0, 0.85), (4.0, 0.80), (4.0, 0.70))
    assert [v.model for v, _ in frontier(a, profiles, Settings())] == ["a-2", "a-0"]


def test_tasks_that_pick_the_same_model_at_one_slo_share_a_session():
    shared = Profile.linear("m", 1.0, 0.0, max_batch=64)
    tasks = [Task(name, 100.0, 100.0, (Variant("m", 0.9),)) for name in ("x", "y")]
    plan = choose_variants(tasks, {"m": shared}, 1)
    sessions = [a for backend in plan.plan.backends for a in backend.allocations]
    assert [(s.model, s.rate) for s in sessions] == [("m", 200.0)]


def test_clear_errors():
    a, profiles = ladder("a", 10.0, 10.0, (10.0, 0.9))  # 2ℓ(1) = 20 ms > the 10 ms SLO
    with pytest.raises(InfeasibleError, match="task 'a': no variant can meet its 10 ms SLO"):
        choose_variants([a], profiles, 4)
    with pytest.raises(WorkloadError, match="no profile for variant 'ghost'"):
        choose_variants([Task("g", 100.0, 1.0, (Variant("ghost", 0.5),))], {}, 1)
    with pytest.raises(WorkloadError, match="accuracy must be within"):
        Variant("m", 93.0)
    with pytest.raises(WorkloadError, match="lists a variant twice"):
        Task("t", 100.0, 1.0, (Variant("m", 0.5), Variant("m", 0.6)))


def test_one_task_beyond_its_accurate_variants_capacity_is_split_between_two_variants():
    # The accurate variant costs 5 ms a request: one backend serves 200 req/s of it, the task asks 400.
    task, profiles = ladder("t", 100.0, 400.0, (1.0, 0.7), (5.0, 0.9))
    whole = choose_variants([task], profiles, 1, split=False)
    assert whole.chosen["t"].accuracy == 0.7 and whole.delivered_accuracy == pytest.approx(0.7)
    split = choose_variants([task], profiles, 1)
    above, rate = split.upper["t"]
    # 5x + (400 - x) ms of backend time per second fits one backend for x up to 150 req/s.
    assert above.accuracy == 0.9 and 100 < rate <= 150
    assert len(split.plan.backends) == 1 and split.shed_rate == 0
    assert 0.75 < split.delivered_accuracy <= occupancy_bound([task], profiles, 1, split=True) + 1e-9

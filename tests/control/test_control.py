"""Rate estimation, re-plan triggers and deficit round robin: the rules the server and simulator share."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from squishy.control import DoesNotFit, EpochPolicy, RateEstimator, ReplanReason, largest_fitting
from squishy.control.loop import ControlConfig, ControlLoop, PlanRequest
from squishy.routing import DeficitRoundRobin, pick_by_backlog
from squishy.scheduler import Backend, Plan


def test_rate_estimate_converges_to_the_offered_rate_and_follows_a_step():
    estimator = RateEstimator(window_s=1.0, time_constant_s=5.0)
    for second in range(30):
        for k in range(100):
            estimator.record("a", second + k / 100)
    assert estimator.rates(30.0)["a"] == pytest.approx(100.0, rel=0.01)
    for second in range(30, 60):
        for k in range(300):
            estimator.record("a", second + k / 300)
    assert estimator.rates(60.0)["a"] == pytest.approx(300.0, rel=0.01)


def test_a_silent_session_decays_toward_zero():
    estimator = RateEstimator(window_s=1.0, time_constant_s=2.0)
    for k in range(50):
        estimator.record("a", k / 50)
    assert estimator.rates(30.0)["a"] < 0.01


def test_epoch_and_early_triggers_with_a_minimum_interval():
    policy = EpochPolicy(epoch_s=30, min_interval_s=10)
    provisioned = {"a": 100.0}
    assert policy.due(5.0, {"a": 200.0}, provisioned) is None  # too soon after the last re-plan
    assert policy.due(12.0, {"a": 105.0}, provisioned) is None  # inside [0.8, 1.1]
    assert policy.due(12.0, {"a": 120.0}, provisioned) is ReplanReason.OVERLOAD
    assert policy.due(12.0, {"a": 70.0}, provisioned) is ReplanReason.UNDERLOAD
    assert policy.due(12.0, {"b": 1.0}, provisioned) is ReplanReason.NEW_SESSION
    assert policy.due(31.0, {"a": 100.0}, provisioned) is ReplanReason.EPOCH
    policy.replanned(31.0)
    assert policy.due(35.0, {"a": 500.0}, provisioned) is None


def test_deficit_round_robin_routes_in_proportion_to_weights():
    router = DeficitRoundRobin(["x", "y", "z"], [160.0, 64.0, 16.0])
    counts = Counter(router.pick() for _ in range(2400))
    assert counts == {"x": 1600, "y": 640, "z": 160}
    # Within any prefix every target is within one request of its share.
    router = DeficitRoundRobin(["x", "y"], [3.0, 1.0])
    picks = [router.pick() for _ in range(40)]
    for n in range(1, 41):
        assert abs(picks[:n].count("y") - n / 4) <= 1


def test_deficit_round_robin_rejects_bad_weights():
    with pytest.raises(ValueError):
        DeficitRoundRobin(["x"], [0.0])
    with pytest.raises(ValueError):
        DeficitRoundRobin([], [])


# ----------------------------------------------------------------- one router, one estimator, one fit
def test_picking_one_at_a_time_and_taking_in_bulk_give_the_same_sequence():
    weights = [160.0, 64.0, 16.0, 0.0, 33.3]
    one = DeficitRoundRobin(list(range(5)), weights)
    bulk = DeficitRoundRobin(list(range(5)), weights)
    singles = [one.pick() for _ in range(5000)]
    taken = np.concatenate([bulk.take(n) for n in (1, 7, 300, 2, 4690)]).tolist()
    assert singles == taken
    assert 3 not in singles  # a zero weight gets nothing


def test_the_shorter_backlog_takes_the_request_where_queues_are_in_sight():
    router = DeficitRoundRobin(["x", "y"], [1.0, 1.0])
    backlog = {"x": 10, "y": 0}
    assert [pick_by_backlog(router, backlog.__getitem__) for _ in range(4)] == ["y"] * 4
    backlog = {"x": 3, "y": 3}  # equal: round robin decides
    assert sorted(pick_by_backlog(router, backlog.__getitem__) for _ in range(4)) == ["x", "x", "y", "y"]


def test_counting_in_bulk_and_one_by_one_gives_the_same_rates():
    rng = np.random.default_rng(4)
    times = np.sort(rng.uniform(0.0, 40.0, 4000))
    single, bulk = RateEstimator(), RateEstimator()
    for t in times.tolist():
        single.record("a", t)
    for chunk in np.array_split(times, 7):  # ahead of the reading time, as the simulator records
        bulk.record_times("a", chunk)
    for now in (5.5, 17.0, 40.5):
        assert single.rates(now) == bulk.rates(now)


def test_a_step_in_load_is_seen_within_two_windows_not_after_an_ewma_lag():
    estimator = RateEstimator(window_s=1.0, time_constant_s=10.0)
    for second in range(30):
        for k in range(200):
            estimator.record("a", second + k / 200)
    assert estimator.rates(30.0)["a"] == pytest.approx(200.0, rel=0.02)
    for second in range(30, 33):
        for k in range(1200):
            estimator.record("a", second + k / 1200)
    assert estimator.rates(31.0)["a"] < 400  # one window high: could be a burst
    assert estimator.rates(32.0)["a"] == pytest.approx(1200.0, rel=0.01)  # two: a level shift
    for second in range(33, 36):
        for k in range(200):
            estimator.record("a", second + k / 200)
    assert estimator.rates(35.0)["a"] == pytest.approx(200.0, rel=0.01)


def test_poisson_noise_alone_is_never_a_level_shift():
    rng = np.random.default_rng(9)
    for rate in (5.0, 40.0, 1500.0):
        estimator = RateEstimator()
        estimator.seed({"a": rate})
        for second in range(600):
            estimator.record_times("a", second + np.sort(rng.uniform(0, 1, rng.poisson(rate))))
        estimator.rates(600.0)
        assert estimator.shifts == 0


def test_the_fitting_search_finds_the_largest_scale_that_fits():
    def plan(scale: float) -> Plan:
        backends = max(1, math.ceil(3.7 * scale))
        return Plan(tuple(Backend(i, 10.0, ()) for i in range(backends)), lower_bound=0.0)

    scale, fitted = largest_fitting(plan, 5, start=2.0, upper=2.0, relative_tolerance=1e-3)
    assert fitted.num_backends == 5 and 5 / 3.7 * 0.999 <= scale <= 5 / 3.7
    scale, _ = largest_fitting(plan, 5, start=0.1, upper=None, relative_tolerance=1e-3)  # growing to fill
    assert 5 / 3.7 * 0.999 <= scale <= 5 / 3.7
    assert largest_fitting(plan, 5, start=1.0, upper=1.0) == (1.0, plan(1.0))  # fits: no search
    with pytest.raises(DoesNotFit):
        largest_fitting(lambda s: plan(1000.0), 5)


def test_a_plan_with_headroom_is_revised_once_the_load_passes_what_it_was_measured_for():
    """A server that planned from a low early estimate (2× headroom on spare slots) must not keep that
    plan's shares and batch sizes when the load settles at twice the estimate."""

    class Planner:
        def fresh(self, rates):  # one backend per 100 req/s
            return Plan(tuple(Backend(i, 10.0, ()) for i in range(max(1, math.ceil(sum(rates.values()) / 100)))), 0.0)

        def incremental(self, previous, rates):
            return self.fresh(rates)

    loop = ControlLoop(ControlConfig(min_interval_s=2.0, max_headroom=2.0), Planner(), capacity=4)
    request = PlanRequest(ReplanReason.NEW_SESSION, 0.0, {"a": 80.0})  # the first, low estimate
    decision = loop.plan_for(request)
    assert decision.headroom == 2.0
    loop.installed(decision)
    for second in range(1, 12):
        loop.record_times("a", np.linspace(second - 1, second, 160, endpoint=False))  # 160 req/s from t = 0
    assert loop.decide(11.5, ["a"]).reason is ReplanReason.OVERLOAD  # 160 > 1.1 × 80, within 2 × 80 or not


def test_the_backends_the_load_needs_are_reported_beyond_the_capacity():
    """What an autoscaler reads: with 4 slots and 1,000 req/s at 100 req/s per backend and 1.5× headroom,
    the plan uses the 4 and says 15 are needed; with room to spare, what the plan uses is what it needs."""

    class Planner:
        def fresh(self, rates):  # one backend per 100 req/s
            return Plan(tuple(Backend(i, 10.0, ()) for i in range(max(1, math.ceil(sum(rates.values()) / 100)))), 0.0)

        def incremental(self, previous, rates):
            return self.fresh(rates)

    loop = ControlLoop(ControlConfig(max_headroom=1.5), Planner(), capacity=4)
    bound = loop.plan_for(PlanRequest(ReplanReason.NEW_SESSION, 0.0, {"a": 600.0, "b": 400.0}))
    assert bound.plan.num_backends == 4 and bound.headroom < 1.0
    assert bound.required_backends == 15
    spare = loop.plan_for(PlanRequest(ReplanReason.NEW_SESSION, 0.0, {"a": 150.0}))
    assert spare.headroom == 1.5 and spare.required_backends == spare.plan.num_backends == 3


def test_a_step_in_mid_window_is_estimated_from_the_windows_wholly_after_it():
    estimator = RateEstimator(window_s=1.0, time_constant_s=10.0)
    estimator.record_times("a", np.arange(0.0, 30.0, 1 / 200))
    # The load steps to 1,200/s half-way through window 30: that window counts 700, the next 1,200.
    estimator.record_times("a", np.concatenate([np.arange(30.0, 30.5, 1 / 200), np.arange(30.5, 33.0, 1 / 1200)]))
    assert estimator.rates(32.0)["a"] == pytest.approx(1200.0, rel=0.01)  # not (700 + 1,200) / 2

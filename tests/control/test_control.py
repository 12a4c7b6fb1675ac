"""Rate estimation, re-plan triggers and deficit round robin: the rules the server and simulator share."""

from __future__ import annotations

from collections import Counter

import pytest

from squishy.control import EpochPolicy, RateEstimator, ReplanReason
from squishy.routing import DeficitRoundRobin


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

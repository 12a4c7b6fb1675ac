"""Arrival processes and the frontends' deficit round robin."""

from __future__ import annotations

import numpy as np
import pytest

from squishy.sim.arrivals import ArrivalSpec, ArrivalStream, RateSchedule
from squishy.sim.frontend import DeficitRoundRobin, split_by_target


def sends(spec: ArrivalSpec, rate: float, end_ms: float, schedule: RateSchedule | None = None, seed: int = 0):
    stream = ArrivalStream(rate, spec, schedule or RateSchedule(), np.random.default_rng(seed))
    chunks = [stream.until(t) for t in np.arange(500.0, end_ms + 1, 500.0)]  # chunked like the simulator
    return np.concatenate(chunks)


@pytest.mark.parametrize("kind", ["poisson", "uniform", "gamma"])
def test_rates_and_burstiness(kind):
    spec = ArrivalSpec(kind, cv=3.0) if kind == "gamma" else ArrivalSpec(kind)
    times = sends(spec, rate=200.0, end_ms=200_000.0)
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < 200_000.0
    assert len(times) == pytest.approx(40_000, rel=0.05 if kind == "gamma" else 0.02)
    gaps = np.diff(times)
    cv = gaps.std() / gaps.mean()
    expected = {"poisson": 1.0, "uniform": 0.0, "gamma": 3.0}[kind]
    assert cv == pytest.approx(expected, abs=0.15 if kind != "uniform" else 1e-6)


def test_chunking_does_not_change_the_sequence():
    spec = ArrivalSpec("gamma", cv=2.0)
    whole = ArrivalStream(100.0, spec, RateSchedule(), np.random.default_rng(7)).until(60_000.0)
    chunked = sends(spec, 100.0, 60_000.0, seed=7)
    assert len(chunked) == len(whole) and np.allclose(chunked, whole, rtol=0, atol=1e-6)  # sums differ in rounding


def test_piecewise_rate_schedule():
    schedule = RateSchedule.parse([[0, 1.0], [10, 3.0], [20, 0.5]])
    times = sends(ArrivalSpec("poisson"), rate=100.0, end_ms=30_000.0, schedule=schedule)
    counts = np.histogram(times, bins=[0, 10_000, 20_000, 30_000])[0]
    expected = np.array([1000, 3000, 500])
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected))  # Poisson counts: within 5 sigma


def test_trace_replays_recorded_times(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("5\n1\n12.5\n")
    spec = ArrivalSpec.parse(f"trace:{path}")
    stream = ArrivalStream(1.0, spec, RateSchedule(), np.random.default_rng(0))
    assert stream.until(6.0).tolist() == [1.0, 5.0]
    assert stream.until(100.0).tolist() == [12.5]


@pytest.mark.parametrize("weights", [[1.0], [3.0, 1.0], [0.2, 5.0, 1.7, 0.01]])
def test_deficit_round_robin_follows_weights(weights):
    drr = DeficitRoundRobin(weights)
    chosen = np.concatenate([drr.take(n) for n in (1, 7, 500, 3, 10_000)])
    shares = np.asarray(weights) / sum(weights)
    for count in (100, 5_000, len(chosen)):
        sent = np.bincount(chosen[:count], minlength=len(weights))
        assert np.all(np.abs(sent - shares * count) <= 2 + 0.002 * count)
    parts = split_by_target(chosen, len(weights))
    assert sum(len(p) for p in parts) == len(chosen)

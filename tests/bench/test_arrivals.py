"""Arrival processes: right mean rate and burstiness (CV), seeded, and a mix that keeps models independent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from squishy.bench import Arrivals, BenchError, schedule


def gaps(arrivals: Arrivals, rate_per_s: float, duration_s: float, seed: int = 7) -> np.ndarray:
    return np.diff(arrivals.times_s(rate_per_s, duration_s, np.random.default_rng(seed)))


@pytest.mark.parametrize(
    ("arrivals", "cv"),
    [(Arrivals.poisson(), 1.0), (Arrivals.gamma(0.5), 0.5), (Arrivals.gamma(2.0), 2.0), (Arrivals.gamma(4.0), 4.0)],
)
def test_gaps_have_the_rate_and_cv_asked_for(arrivals: Arrivals, cv: float) -> None:
    rate_per_s = 500.0
    sample = gaps(arrivals, rate_per_s, duration_s=400.0)  # ~200,000 gaps
    assert sample.mean() == pytest.approx(1 / rate_per_s, rel=0.03)
    assert sample.std() / sample.mean() == pytest.approx(cv, rel=0.05)


def test_uniform_arrivals_are_evenly_spaced_at_the_rate() -> None:
    times = Arrivals.uniform().times_s(250.0, 4.0, np.random.default_rng(1))
    assert len(times) in (999, 1000)
    assert np.allclose(np.diff(times), 1 / 250.0)
    assert 0 <= times[0] < 1 / 250.0 and times[-1] < 4.0


def test_times_fall_in_the_window_sorted() -> None:
    times = Arrivals.gamma(3.0).times_s(100.0, 2.0, np.random.default_rng(3))
    assert np.all(np.diff(times) >= 0)
    assert times.min() >= 0 and times.max() < 2.0


def test_the_same_seed_gives_the_same_schedule_and_another_seed_does_not() -> None:
    first = schedule([100.0, 30.0], Arrivals.gamma(2.0), 5.0, seed=11)
    again = schedule([100.0, 30.0], Arrivals.gamma(2.0), 5.0, seed=11)
    other = schedule([100.0, 30.0], Arrivals.gamma(2.0), 5.0, seed=12)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_a_mix_gives_each_model_its_rate_and_adding_a_model_leaves_the_others_alone() -> None:
    times, model = schedule([200.0, 50.0], Arrivals.poisson(), 100.0, seed=5)
    assert np.all(np.diff(times) >= 0)
    assert (model == 0).sum() == pytest.approx(200 * 100, rel=0.03)
    assert (model == 1).sum() == pytest.approx(50 * 100, rel=0.05)
    times3, model3 = schedule([200.0, 50.0, 10.0], Arrivals.poisson(), 100.0, seed=5)
    for i in (0, 1):
        assert np.array_equal(times[model == i], times3[model3 == i])


def test_a_trace_is_rescaled_to_the_rate_and_repeated() -> None:
    trace = Arrivals.trace([10.0, 10.1, 10.3, 10.4])  # 3 gaps over 0.4 s: 7.5 req/s as recorded
    assert trace.trace_rate_per_s == pytest.approx(7.5)
    as_recorded = trace.times_s(7.5, 1.0, np.random.default_rng(0))
    assert np.allclose(as_recorded[:4], [0.0, 0.1, 0.3, 0.4])
    assert np.allclose(as_recorded[4:8], np.array([0.0, 0.1, 0.3, 0.4]) + 0.4 + 1 / 7.5)  # the next pass
    doubled = trace.times_s(15.0, 10.0, np.random.default_rng(0))
    assert len(doubled) / 10.0 == pytest.approx(15.0, rel=0.05)


def test_parse_reads_the_cli_forms(tmp_path) -> None:
    assert Arrivals.parse("poisson") == Arrivals.poisson()
    assert Arrivals.parse("uniform").kind == "uniform"
    assert Arrivals.parse("gamma:2.5") == Arrivals.gamma(2.5)
    lines = tmp_path / "trace.txt"
    lines.write_text("# seconds\n0.0\n0.5\n2.0\n")
    assert Arrivals.parse(f"trace:{lines}").trace_s == (0.0, 0.5, 2.0)
    listed = tmp_path / "trace.json"
    listed.write_text(json.dumps([1.0, 1.25, 2.0]))
    assert Arrivals.parse(f"trace:{listed}").trace_s == (1.0, 1.25, 2.0)


@pytest.mark.parametrize("text", ["gamma", "gamma:x", "gamma:-1", "zipf", "trace:/nonexistent/file"])
def test_parse_rejects_nonsense_with_a_message(text: str) -> None:
    with pytest.raises(BenchError):
        Arrivals.parse(text)

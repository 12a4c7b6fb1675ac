"""Arrival processes: the rate and burstiness (CV) asked for, seeded, chunking that changes nothing, piecewise
rates, traces, a mix that keeps models independent, and one trace for the load generator and the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from squishy.arrivals import Arrivals, ArrivalStream, RateSchedule, schedule, source_rng, source_streams
from squishy.errors import ArrivalsError, WorkloadError


def gaps(arrivals: Arrivals, rate_per_s: float, duration_s: float, seed: int = 7) -> np.ndarray:
    return np.diff(arrivals.times_s(rate_per_s, duration_s, np.random.default_rng(seed)))


def chunked(stream: ArrivalStream, end_ms: float, chunk_ms: float = 500.0) -> np.ndarray:
    """Send times as the simulator asks for them: a chunk at a time, the last chunk ending at ``end_ms``."""
    ends = [*np.arange(chunk_ms, end_ms, chunk_ms).tolist(), end_ms]
    return np.concatenate([stream.until(end) for end in ends])


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


def test_uniform_sources_start_at_random_phases() -> None:
    firsts = [Arrivals.uniform().times_s(10.0, 1.0, source_rng(0, i))[0] for i in range(20)]
    assert len(set(firsts)) == 20 and all(0 <= t < 0.1 for t in firsts)


def test_times_fall_in_the_window_sorted() -> None:
    times = Arrivals.gamma(3.0).times_s(100.0, 2.0, np.random.default_rng(3))
    assert np.all(np.diff(times) >= 0)
    assert times.min() >= 0 and times.max() < 2.0


@pytest.mark.parametrize(
    "arrivals", [Arrivals.poisson(), Arrivals.gamma(2.0), Arrivals.uniform(), Arrivals.trace([0.0, 0.01, 0.05])]
)
def test_chunking_does_not_change_a_single_bit(arrivals: Arrivals) -> None:
    whole = ArrivalStream(100.0, arrivals, RateSchedule(), np.random.default_rng(7)).until(60_000.0)
    for chunk_ms in (500.0, 37.0, 20_000.0):
        stream = ArrivalStream(100.0, arrivals, RateSchedule(), np.random.default_rng(7))
        assert np.array_equal(chunked(stream, 60_000.0, chunk_ms), whole)
    assert len(whole) == pytest.approx(6000, rel=0.1)


def test_piecewise_rate_schedule() -> None:
    rates = RateSchedule.parse([[0, 1.0], [10, 3.0], [20, 0.5]])
    stream = ArrivalStream(100.0, Arrivals.poisson(), rates, np.random.default_rng(0))
    counts = np.histogram(chunked(stream, 30_000.0), bins=[0, 10_000, 20_000, 30_000])[0]
    expected = np.array([1000, 3000, 500])
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected))  # Poisson counts: within 5 sigma


def test_a_rate_schedule_speeds_a_gamma_process_up_without_changing_its_cv() -> None:
    rates = RateSchedule.parse([[0, 1.0], [100, 4.0]])
    times = ArrivalStream(200.0, Arrivals.gamma(2.0), rates, np.random.default_rng(2)).until(200_000.0)
    for low, high, rate_per_ms in ((0, 100_000, 0.2), (100_000, 200_000, 0.8)):
        part = np.diff(times[(times >= low) & (times < high)])
        assert part.mean() == pytest.approx(1 / rate_per_ms, rel=0.05)
        assert part.std() / part.mean() == pytest.approx(2.0, rel=0.08)


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


@pytest.mark.parametrize("arrivals", [Arrivals.poisson(), Arrivals.gamma(2.0), Arrivals.uniform()])
def test_the_load_generator_and_the_simulator_send_at_the_same_times(arrivals: Arrivals) -> None:
    rates, duration_s, seed = [120.0, 45.0, 3.0], 20.0, 9
    offsets_s, model = schedule(rates, arrivals, duration_s, seed)
    # The simulator's streams, asked for the run a chunk at a time as the simulator does.
    streams = source_streams(rates, arrivals, seed)
    for index, stream in enumerate(streams):
        sends_ms = chunked(stream, duration_s * 1000.0)
        assert np.array_equal(offsets_s[model == index], sends_ms / 1000.0)


@pytest.mark.parametrize("arrivals", [Arrivals.poisson(), Arrivals.gamma(2.0)])
def test_a_simulation_draws_the_load_generators_schedule(arrivals: Arrivals) -> None:
    from squishy.profiles import Profile
    from squishy.scheduler import Session, Workload, make_plan
    from squishy.sim import SimConfig, Simulation

    rates, duration_s, seed = [80.0, 20.0], 5.0, 4
    profiles = {m: Profile.linear(m, 1.0, 5.0, max_batch=32) for m in ("a", "b")}
    workload = Workload(sessions=(Session("a", 100.0, rates[0]), Session("b", 100.0, rates[1])))
    config = SimConfig(duration_s=duration_s, seed=seed, arrivals=arrivals)
    simulation = Simulation(workload, profiles, make_plan(workload, profiles), "squishy", config)
    offsets_s, model = schedule(rates, arrivals, duration_s, seed)
    for index, stream in enumerate(simulation.streams):
        sends_ms = chunked(stream, duration_s * 1000.0, config.chunk_ms)
        assert np.array_equal(offsets_s[model == index], sends_ms / 1000.0)


def test_a_trace_is_rescaled_to_the_rate_and_repeated() -> None:
    trace = Arrivals.trace([10.0, 10.1, 10.3, 10.4])  # 3 gaps over 0.4 s: 7.5 req/s as recorded
    assert trace.trace_rate_per_s == pytest.approx(7.5)
    as_recorded = trace.times_s(7.5, 1.0, np.random.default_rng(0))
    assert np.allclose(as_recorded[:4], [0.0, 0.1, 0.3, 0.4])
    assert np.allclose(as_recorded[4:8], np.array([0.0, 0.1, 0.3, 0.4]) + 0.4 + 1 / 7.5)  # the next pass
    doubled = trace.times_s(15.0, 10.0, np.random.default_rng(0))
    assert len(doubled) / 10.0 == pytest.approx(15.0, rel=0.05)
    assert np.allclose(doubled[:4], [0.0, 0.05, 0.15, 0.2])


def test_a_replay_sends_exactly_the_recorded_times_once() -> None:
    replay = Arrivals.replay([0.005, 0.001, 0.0125])
    stream = ArrivalStream(1.0, replay, RateSchedule(), np.random.default_rng(0))
    assert stream.until(6.0).tolist() == [1.0, 5.0]
    assert stream.until(100.0).tolist() == [12.5]
    assert stream.until(1e9).tolist() == []
    faster = ArrivalStream(1.0, replay, RateSchedule(), np.random.default_rng(0), trace_time_scale=2.0)
    assert faster.until(100.0).tolist() == [0.5, 2.5, 6.25]  # the simulator's load scale compresses time


def test_parse_reads_the_cli_and_scenario_forms(tmp_path: Path) -> None:
    assert Arrivals.parse("poisson") == Arrivals.poisson()
    assert Arrivals.parse("uniform") == Arrivals.uniform()
    assert Arrivals.parse("gamma:2.5") == Arrivals.gamma(2.5)
    assert Arrivals.parse({"kind": "gamma", "cv": 3}) == Arrivals.gamma(3.0)
    lines = tmp_path / "trace.txt"
    lines.write_text("# seconds\n0.0\n0.5\n2.0\n")
    assert Arrivals.parse(f"trace:{lines}").trace_s == (0.0, 0.5, 2.0)
    listed = tmp_path / "trace.json"
    listed.write_text(json.dumps([1.0, 2.0, 1.25]))
    assert Arrivals.parse(f"trace:{listed}").trace_s == (1.0, 1.25, 2.0)
    assert Arrivals.parse({"kind": "replay", "file": "trace.json"}, base=tmp_path) == Arrivals.replay([1.0, 1.25, 2.0])
    assert Arrivals.parse("replay:trace.txt", base=tmp_path).describe() == "replay (3 send times up to 2 s)"


@pytest.mark.parametrize(
    "value", ["gamma", "gamma:x", "gamma:-1", "zipf", "trace:/nonexistent/file", {"kind": "trace"}, "trace:"]
)
def test_parse_rejects_nonsense_with_a_message(value: object) -> None:
    with pytest.raises(ArrivalsError) as raised:
        Arrivals.parse(value)
    assert isinstance(raised.value, WorkloadError) and "\n" not in str(raised.value)


def test_a_bad_trace_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("0.1\nsoon\n")
    with pytest.raises(ArrivalsError, match=r"bad\.txt"):
        Arrivals.parse(f"trace:{path}")
    with pytest.raises(ArrivalsError, match="two distinct"):
        Arrivals.trace([1.0, 1.0])


@pytest.mark.parametrize("steps", [[[1, 1.0]], [[0, 1.0], [0, 2.0]], [[0, 0.0]], [[0]]])
def test_a_bad_rate_schedule_is_refused(steps: list[list[float]]) -> None:
    with pytest.raises(ArrivalsError):
        RateSchedule.parse(steps)

"""The goodput search: finds the knee of a server with a known capacity, and of fake runners whose pass/fail
is not monotone in the rate; its steps scan, bisect and confirm, and it reports the pass/fail curve."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from squishy.bench import Arrivals, BenchConfig, BenchError, ModelLoad, SearchSettings, search
from squishy.bench.report import render_curve
from squishy.bench.search import _search
from squishy.bench.stats import Stats
from tests.bench.synthetic import MODEL, LimitedServer

CAPACITY_PER_S = 200.0


@pytest.fixture
def limited() -> Iterator[LimitedServer]:
    server = LimitedServer(CAPACITY_PER_S, burst=10)
    yield server
    server.stop()


def test_the_search_finds_the_knee_of_a_server_that_sheds_beyond_its_capacity(limited: LimitedServer) -> None:
    config = BenchConfig(
        models=(ModelLoad(MODEL, rate_per_s=50, slo_ms=1000),),
        url=limited.url,
        arrivals=Arrivals.uniform(),
        duration_s=0.6,
        warmup_s=0.2,
    )
    found = search(config, SearchSettings(tolerance=0.1, cooldown_s=0.2, max_rate_per_s=2000))
    assert found.confirmed
    assert 0.75 * CAPACITY_PER_S <= found.rate_per_s <= 1.15 * CAPACITY_PER_S
    phases = [step.phase for step in found.steps]
    assert phases[0] == "scan" and phases[-1] == "confirm"
    failed = [step for step in found.steps if not step.passed]
    assert failed and all(step.result.overall.dropped > 0 for step in failed)
    assert all(step.rate_per_s > found.rate_per_s for step in failed if step.phase != "confirm")
    assert {step.seed for step in found.steps if step.phase == "confirm"} == {config.seed + 1}
    curve = found.to_dict()["curve"]
    assert len(curve) == len(found.steps) and curve == sorted(curve, key=lambda point: point["rate_per_s"])
    assert all(point["passed"] == (point["met_fraction"] >= 0.99) for point in curve if not point["cut_short"])


def test_with_fresh_servers_every_step_runs_on_a_server_of_its_own() -> None:
    started: list[int] = []

    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        server = LimitedServer(CAPACITY_PER_S, burst=10)
        started.append(server.port)
        try:
            yield server.url
        finally:
            server.stop()

    config = BenchConfig(
        models=(ModelLoad(MODEL, rate_per_s=50, slo_ms=1000),),
        url="http://127.0.0.1:9",  # nothing listens here: every step must go to its own server
        arrivals=Arrivals.uniform(),
        duration_s=0.6,
        warmup_s=0.2,
    )
    found = search(
        config, SearchSettings(tolerance=0.1, cooldown_s=0.0, max_rate_per_s=2000), fresh_server=fresh_server
    )
    assert found.confirmed
    assert 0.75 * CAPACITY_PER_S <= found.rate_per_s <= 1.15 * CAPACITY_PER_S
    assert len(started) == len(found.steps) + 1  # one more to read the model's metadata


# ---------------------------------------------------------------------------- the algorithm alone


@dataclass
class FakeResult:
    rate_per_s: float
    passes: bool
    cut_short: bool = False
    per_model: dict[str, Stats] = field(default_factory=dict)  # no figures: the curve shows "-" for them

    def passed(self, met_fraction: float) -> bool:
        return self.passes


def fake_runner(passes: Callable[[float], bool]):  # type: ignore[no-untyped-def]
    """A runner whose steps pass where ``passes`` says; it records the (rate, seed) of every step."""
    calls: list[tuple[float, int]] = []

    def runner(config: BenchConfig, stop_below: float | None) -> FakeResult:
        calls.append((config.total_rate_per_s, config.seed))
        return FakeResult(config.total_rate_per_s, passes(config.total_rate_per_s))

    return runner, calls


CONFIG = BenchConfig(models=(ModelLoad("a", 30, 10), ModelLoad("b", 10, 10)), seed=4)


@pytest.mark.parametrize("knee", [3.0, 137.0, 1000.0, 45_000.0])
def test_bisection_lands_within_tolerance_below_the_knee(knee: float) -> None:
    runner, calls = fake_runner(lambda rate: rate <= knee)
    found = _search(CONFIG, SearchSettings(tolerance=0.05, cooldown_s=0, max_steps=24), runner, None)  # type: ignore[arg-type]
    assert found.confirmed
    assert knee * 0.95 <= found.rate_per_s <= knee
    assert calls[0] == (10.0, 4)  # the scan starts a quarter of the way to the mix's own total rate
    assert calls[-1] == (found.rate_per_s, 5)  # confirmed on the next seed


def test_a_non_monotone_knee_is_found_above_the_failures() -> None:
    runner, calls = fake_runner(lambda rate: 5 <= rate <= 8 or 40 <= rate <= 100)
    settings = SearchSettings(tolerance=0.05, cooldown_s=0, scan_from=8.0)
    found = _search(CONFIG, settings, runner, None)  # type: ignore[arg-type]
    assert found.confirmed and 95.0 <= found.rate_per_s <= 100.0
    curve = [(s.rate_per_s, s.passed) for s in found.curve]
    assert (5.0, True) in curve and (10.0, False) in curve and (20.0, False) in curve and (80.0, True) in curve
    assert len(curve) == len(calls)
    title, header, _, *rows = render_curve(found)
    assert title == "pass/fail curve:" and header.split()[:2] == ["rate", "r/s"]
    assert [(float(row.split()[0]), row.split()[3]) for row in rows] == [
        (round(rate, 1), "pass" if passed else "FAIL") for rate, passed in curve
    ]


def test_nothing_passing_reports_zero() -> None:
    runner, _ = fake_runner(lambda rate: rate <= 0.5)
    found = _search(CONFIG, SearchSettings(cooldown_s=0, min_rate_per_s=1.0), runner, None)  # type: ignore[arg-type]
    assert found.rate_per_s == 0 and not found.confirmed


def test_a_failed_confirmation_steps_down() -> None:
    settings = SearchSettings(tolerance=0.05, cooldown_s=0)
    runner, calls = fake_runner(lambda rate: rate <= 100.0)
    clean = _search(CONFIG, settings, runner, None)  # type: ignore[arg-type]
    first_confirmation = len(calls)  # the clean search confirmed on its last call
    count = 0

    def noisy(config: BenchConfig, stop_below: float | None) -> FakeResult:
        nonlocal count
        count += 1  # the same steps, but the first confirmation fails (a noisy run)
        return FakeResult(config.total_rate_per_s, count != first_confirmation and config.total_rate_per_s <= 100.0)

    found = _search(CONFIG, settings, noisy, None)  # type: ignore[arg-type]
    assert found.confirmed and found.rate_per_s == pytest.approx(clean.rate_per_s * 0.95)
    assert [s.phase for s in found.steps][-2:] == ["confirm", "confirm"]


def test_a_replay_cannot_be_searched() -> None:
    config = BenchConfig(models=(ModelLoad("a", 30, 10),), arrivals=Arrivals.replay([0.0, 0.5]))
    with pytest.raises(BenchError, match="replayed"):
        search(config)

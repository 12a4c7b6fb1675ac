"""The goodput search: finds the knee of a server with a known capacity; its steps bracket and confirm."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from squishy.bench import Arrivals, BenchConfig, ModelLoad, SearchSettings, search
from squishy.bench.search import _search
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
    assert phases[0] == "ramp" and phases[-1] == "confirm"
    failed = [step for step in found.steps if not step.passed]
    assert failed and all(step.result.overall.dropped > 0 for step in failed)
    assert all(step.rate_per_s > found.rate_per_s for step in failed if step.phase != "confirm")


# ---------------------------------------------------------------------------- the algorithm alone


@dataclass
class FakeResult:
    rate_per_s: float
    knee_per_s: float

    def passed(self, met_fraction: float) -> bool:
        return self.rate_per_s <= self.knee_per_s


def fake_runner(knee_per_s: float):  # type: ignore[no-untyped-def]
    """A runner whose steps pass exactly up to the knee; it records the rates asked for."""
    calls: list[float] = []

    def runner(config: BenchConfig, stop_below: float | None) -> FakeResult:
        calls.append(config.total_rate_per_s)
        return FakeResult(config.total_rate_per_s, knee_per_s)

    return runner, calls


CONFIG = BenchConfig(models=(ModelLoad("a", 30, 10), ModelLoad("b", 10, 10)))


@pytest.mark.parametrize("knee", [3.0, 137.0, 1000.0, 45_000.0])
def test_bisection_lands_within_tolerance_below_the_knee(knee: float) -> None:
    runner, calls = fake_runner(knee)
    found = _search(CONFIG, SearchSettings(tolerance=0.05, cooldown_s=0), runner, None)  # type: ignore[arg-type]
    assert found.confirmed
    assert knee * 0.95 <= found.rate_per_s <= knee
    assert calls[0] == 40.0  # starts from the mix's own total rate


def test_nothing_passing_reports_zero() -> None:
    runner, _ = fake_runner(0.5)
    found = _search(CONFIG, SearchSettings(cooldown_s=0, min_rate_per_s=1.0), runner, None)  # type: ignore[arg-type]
    assert found.rate_per_s == 0 and not found.confirmed


def test_a_failed_confirmation_steps_down() -> None:
    settings = SearchSettings(tolerance=0.05, cooldown_s=0)
    runner, calls = fake_runner(100.0)
    clean = _search(CONFIG, settings, runner, None)  # type: ignore[arg-type]
    first_confirmation = len(calls)  # the clean search confirmed on its last call
    count = 0

    def noisy(config: BenchConfig, stop_below: float | None) -> FakeResult:
        nonlocal count
        count += 1  # the same steps, but the first confirmation fails (a noisy run)
        return FakeResult(config.total_rate_per_s, 0.0 if count == first_confirmation else 100.0)

    found = _search(CONFIG, settings, noisy, None)  # type: ignore[arg-type]
    assert found.confirmed and found.rate_per_s == pytest.approx(clean.rate_per_s * 0.95)
    assert [s.phase for s in found.steps][-2:] == ["confirm", "confirm"]

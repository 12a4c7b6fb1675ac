"""The rate search alone, on fake trials: monotone knees, pass/fail curves that are not monotone, nothing
passing, the ceiling, failed confirmations, budgets, and the curve it reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from squishy.errors import SquishyError
from squishy.search import RateSearch, Trial, highest_passing_rate


@dataclass(frozen=True)
class Verdict:
    passed: bool


def passing_on(*intervals: tuple[float, float]) -> Callable[[float, int], Verdict]:
    """A trial that passes on the given rate intervals, whatever the seed."""
    return lambda rate, seed: Verdict(any(low <= rate <= high for low, high in intervals))


@pytest.mark.parametrize("knee", [3.0, 137.0, 1000.0, 45_000.0])
@pytest.mark.parametrize("ratio", [2.0, math.sqrt(2.0)])
def test_a_monotone_knee_is_found_within_tolerance_below_it(knee: float, ratio: float) -> None:
    search = RateSearch(start=40.0, floor=1.0, ceiling=1e6, grid_ratio=ratio, max_trials=40)
    found = highest_passing_rate(passing_on((0.0, knee)), search)
    assert found.confirmed
    assert knee * 0.95 <= found.rate <= knee
    assert found.bracket is not None and found.bracket[0] == found.rate and found.bracket[1] is not None
    assert found.bracket[1] > knee and (found.bracket[1] - found.bracket[0]) / found.bracket[0] <= 0.05


def test_the_highest_of_two_passing_islands_is_found_and_the_curve_shows_both() -> None:
    search = RateSearch(start=40.0, floor=1.0, ceiling=1e6, scan_from=8.0)
    found = highest_passing_rate(passing_on((5.0, 8.0), (40.0, 100.0)), search)
    assert found.confirmed and 95.0 <= found.rate <= 100.0
    curve = [(t.rate, t.passed) for t in found.curve]
    assert curve == sorted(curve)
    assert (5.0, True) in curve and (10.0, False) in curve and (20.0, False) in curve and (40.0, True) in curve
    assert all(not passed for rate, passed in curve if rate > 100.0)
    assert [t.phase for t in found.trials][-1] == "confirm"


def test_passing_above_failures_is_not_reported_as_zero() -> None:
    # The case that broke doubling/halving: passes at 700, fails at 400 and at 20.
    found = highest_passing_rate(
        passing_on((600.0, 850.0)), RateSearch(start=400.0, grid_ratio=math.sqrt(2.0), failures_to_stop=3)
    )
    assert found.confirmed and 0.95 * 850.0 <= found.rate <= 850.0
    tried = {round(t.rate): t.passed for t in found.curve if t.phase == "scan"}
    assert tried[400] is False and tried[800] is True


def test_nothing_passing_reports_zero_after_scanning_down_to_the_floor() -> None:
    found = highest_passing_rate(passing_on((0.0, 0.5)), RateSearch(start=40.0, floor=1.0, ceiling=1e6))
    assert found.rate == 0 and not found.confirmed and found.bracket is None
    assert min(t.rate for t in found.trials) == 1.0
    assert all(t.phase == "scan" and not t.passed for t in found.trials)


def test_a_scan_that_starts_too_high_goes_down_to_the_highest_pass() -> None:
    found = highest_passing_rate(passing_on((0.0, 30.0)), RateSearch(start=1000.0, floor=1.0, ceiling=1e6))
    assert found.confirmed and 30 * 0.95 <= found.rate <= 30


def test_passing_at_the_ceiling_stops_there_without_bisecting() -> None:
    found = highest_passing_rate(passing_on((0.0, 1e9)), RateSearch(start=50.0, floor=1.0, ceiling=100.0))
    assert found.rate == 100.0 and found.confirmed and found.bracket == (100.0, None)
    assert "bisect" not in {t.phase for t in found.trials}


def test_a_failed_confirmation_steps_down_then_falls_back_to_a_lower_bracket() -> None:
    def trial(rate: float, seed: int) -> Verdict:
        lower, upper = 8.0 <= rate <= 12.0, 40.0 <= rate <= 100.0
        return Verdict(lower or (upper and seed == 0))  # the upper island was luck of the first seed

    search = RateSearch(start=40.0, floor=1.0, ceiling=1e6, confirm_attempts=5, seed=0, confirm_seed=1)
    found = highest_passing_rate(trial, search)
    confirms = [(round(t.rate, 2), t.passed) for t in found.confirmations]
    assert confirms[0][0] >= 95.0 and confirms[1][0] == pytest.approx(confirms[0][0] * 0.95, abs=0.01)
    assert confirms[-1] == (10.0, True) and all(not passed for _, passed in confirms[:-1])
    assert found.confirmed and found.rate == 10.0
    assert all(t.seed == 1 for t in found.confirmations)


def test_unconfirmed_reports_the_last_rate_tried() -> None:
    found = highest_passing_rate(lambda rate, seed: Verdict(seed == 0 and rate <= 100.0), RateSearch(start=40.0))
    assert not found.confirmed and len(found.confirmations) == 3
    assert found.rate == found.confirmations[-1].rate > 0


def test_the_budget_caps_scan_and_bisection_and_confirmation_comes_on_top() -> None:
    search = RateSearch(start=40.0, floor=1.0, ceiling=1e6, max_trials=6, confirm_attempts=2)
    found = highest_passing_rate(passing_on((0.0, 45_000.0)), search)
    assert sum(t.phase != "confirm" for t in found.trials) == 6
    assert 1 <= len(found.confirmations) <= 2
    assert found.bracket == (found.trials[5].rate, None)  # nothing above the last pass was tried


def test_every_trial_is_reported_as_it_happens_and_in_the_result() -> None:
    seen: list[Trial[Verdict]] = []
    found = highest_passing_rate(passing_on((0.0, 137.0)), RateSearch(start=40.0), seen.append)
    assert tuple(seen) == found.trials
    data = found.to_dict()
    assert data["rate"] == found.rate and data["confirmed"]
    assert [point["rate"] for point in data["curve"]] == sorted(point["rate"] for point in data["curve"])
    assert set(data["curve"][0]) == {"phase", "rate", "seed", "passed"}


def test_the_grid_runs_through_the_start_within_the_bounds() -> None:
    grid = RateSearch(start=50.0, floor=1.0, ceiling=100.0).grid()
    assert grid == [1.0, 1.5625, 3.125, 6.25, 12.5, 25.0, 50.0, 100.0]
    wide = RateSearch(start=3.0, grid_ratio=math.sqrt(2.0)).grid()
    assert wide[0] == pytest.approx(3.0 / 1024) and wide[-1] == pytest.approx(3.0 * 1024) and 3.0 in wide


@pytest.mark.parametrize(
    "settings",
    [
        {"start": 0.0},
        {"start": 10.0, "floor": 20.0},
        {"start": 10.0, "ceiling": 5.0},
        {"start": 10.0, "tolerance": 0.0},
        {"start": 10.0, "grid_ratio": 1.0},
        {"start": 10.0, "max_trials": 0},
    ],
)
def test_nonsense_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(SquishyError):
        RateSearch(**settings)

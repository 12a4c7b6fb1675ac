"""The highest rate at which trials pass, without assuming that passing is monotone in the rate.

A load test's pass/fail is not monotone in the offered rate: under bursty (gamma, CV 2) arrivals a
simulated system kept 99% good at 700 frames/s on two seeds but not at 400 or at 20 (plans sized for a
smaller load have fewer, fuller backends; a short run sees one burst or none). A doubling/halving
bracket that starts between the failures then bisects reports 0. So the search looks at the whole
curve first:

1. **Scan.** Trials on a geometric grid (``grid_ratio``, through ``start``, within [``floor``,
   ``ceiling``]) from ``start / scan_from`` upwards, until ``failures_to_stop`` grid points in a row
   have failed above both the start and the highest pass so far, or the ceiling is reached. If nothing
   passed, the scan goes on downwards from where it began until a point passes or the floor fails.
2. **Bisect** inside the highest passing bracket: the highest passing grid point and the failing grid
   point just above it, until (fail − pass) / pass ≤ ``tolerance``. No bisection when the highest pass
   is the ceiling, or when nothing above it was tried (the trial budget ran out).
3. **Confirm** the highest pass on a second seed (``confirm_seed``): one lucky run must not make the
   headline. If that fails, step down once by ``tolerance`` (noise at the edge); if that fails too,
   fall back to lower rates that passed on the first seed, highest first, each at least ``tolerance``
   below the last one tried (the rest of the bracket, then the next lower passing bracket), for
   ``confirm_attempts`` confirmation trials in all. No bisection again after a fallback: the answer
   is then as coarse as the grid, and says so by being a grid point.

Caps: ``max_trials`` for scan and bisection together (the scan stops at the cap, bisection uses what
is left), and ``confirm_attempts`` on top. Every trial is kept: ``RateSearchResult.curve`` is the
pass/fail curve (rate, seed, pass) that the answer came from, not only its edge.

Pure: no clocks, no I/O. A trial is any callable ``(rate, seed) -> outcome`` whose outcome has a
``passed`` attribute; the callers (``squishy.bench.search`` runs real load, ``squishy.sim.search``
simulates) decide what a rate and a pass are, and may stop hopeless trials early.

    result = highest_passing_rate(lambda rate, seed: measure(rate, seed), RateSearch(start=100, ceiling=1e4))
    result.rate, result.confirmed, [(t.rate, t.seed, t.passed) for t in result.curve]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from squishy.errors import SquishyError

PHASES = ("scan", "bisect", "confirm")


class PassFail(Protocol):
    @property
    def passed(self) -> bool: ...


OutcomeT = TypeVar("OutcomeT", bound=PassFail)


@dataclass(frozen=True)
class RateSearch:
    """Where a search starts, its bounds, its precision and its budget."""

    start: float  # a guess near the answer: the grid runs through it
    floor: float = 0.0  # lowest rate tried (0: start / 1024)
    ceiling: float = math.inf  # highest rate tried (inf: start × 1024)
    tolerance: float = 0.05  # bisection stops when (fail − pass) / pass ≤ this
    grid_ratio: float = 2.0  # between neighbouring scan points
    scan_from: float = 4.0  # the scan starts this factor below the start
    failures_to_stop: int = 2  # failing grid points in a row, above the start and every pass, that end the scan
    max_trials: int = 20  # scan and bisection; confirmation trials come on top
    confirm_attempts: int = 3
    seed: int = 0  # for the scan and the bisection
    confirm_seed: int = 1

    def __post_init__(self) -> None:
        if not (self.start > 0 and math.isfinite(self.start)):
            raise SquishyError(f"a rate search needs a positive finite start, got {self.start}")
        if not 0 <= self.floor <= self.start <= self.ceiling:
            raise SquishyError(f"need 0 ≤ floor ≤ start ≤ ceiling, got {self.floor}, {self.start}, {self.ceiling}")
        if not 0 < self.tolerance < 1:
            raise SquishyError(f"the tolerance must be a fraction in (0, 1), got {self.tolerance}")
        if not self.grid_ratio > 1 or not self.scan_from >= 1:
            raise SquishyError("the grid ratio must be > 1 and the scan must start at or below the start")
        if self.failures_to_stop < 1 or self.max_trials < 1 or self.confirm_attempts < 1:
            raise SquishyError("a search needs a failure to stop on, one trial and one confirmation attempt")

    @property
    def low(self) -> float:
        return self.floor if self.floor > 0 else self.start / 1024.0

    @property
    def high(self) -> float:
        return self.ceiling if math.isfinite(self.ceiling) else self.start * 1024.0

    def grid(self) -> list[float]:
        """The scan's rates, ascending: start × ratio^k within [low, high], plus low and high themselves."""
        below = math.floor(math.log(self.start / self.low) / math.log(self.grid_ratio) + 1e-9)
        above = math.floor(math.log(self.high / self.start) / math.log(self.grid_ratio) + 1e-9)
        points = [self.start * self.grid_ratio**k for k in range(-below, above + 1)]
        if points[0] > self.low * (1 + 1e-9):
            points.insert(0, float(self.low))
        if points[-1] < self.high * (1 - 1e-9):
            points.append(float(self.high))
        return points


@dataclass(frozen=True)
class Trial(Generic[OutcomeT]):
    phase: str  # "scan", "bisect" or "confirm"
    rate: float
    seed: int
    outcome: OutcomeT

    @property
    def passed(self) -> bool:
        return bool(self.outcome.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "rate": self.rate, "seed": self.seed, "passed": self.passed}


@dataclass(frozen=True)
class RateSearchResult(Generic[OutcomeT]):
    # The highest rate that passed on both seeds; when every confirmation failed, the last rate tried
    # to confirm (``confirmed`` False); 0 when no trial passed at all.
    rate: float
    confirmed: bool
    trials: tuple[Trial[OutcomeT], ...]  # in the order run
    # The bracket bisected: (highest pass on the first seed, lowest failure above it; None: none seen).
    bracket: tuple[float, float | None] | None

    @property
    def curve(self) -> tuple[Trial[OutcomeT], ...]:
        """Every trial by rate (then seed, then order run): the pass/fail curve the answer came from."""
        order = sorted(range(len(self.trials)), key=lambda i: (self.trials[i].rate, self.trials[i].seed, i))
        return tuple(self.trials[i] for i in order)

    @property
    def confirmations(self) -> tuple[Trial[OutcomeT], ...]:
        return tuple(t for t in self.trials if t.phase == "confirm")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "confirmed": self.confirmed,
            "bracket": list(self.bracket) if self.bracket is not None else None,
            "curve": [t.to_dict() for t in self.curve],
        }


def highest_passing_rate(
    trial: Callable[[float, int], OutcomeT],
    search: RateSearch,
    on_trial: Callable[[Trial[OutcomeT]], None] | None = None,
) -> RateSearchResult[OutcomeT]:
    """Scan, bisect the highest passing bracket, confirm on a second seed (see the module's docstring)."""
    trials: list[Trial[OutcomeT]] = []

    def run(phase: str, rate: float, seed: int) -> bool:
        done = Trial(phase, rate, seed, trial(rate, seed))
        trials.append(done)
        if on_trial is not None:
            on_trial(done)
        return done.passed

    grid = search.grid()
    start_index = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / search.start)))
    bottom = next(i for i, rate in enumerate(grid) if rate >= search.start / search.scan_from * (1 - 1e-9))
    passed: dict[int, bool] = {}  # grid index → passed on the first seed

    # 1. Scan upwards from the bottom, then downwards if nothing passed.
    highest: int | None = None
    failures_in_a_row = 0
    index = bottom
    while index < len(grid) and len(trials) < search.max_trials:
        passed[index] = run("scan", grid[index], search.seed)
        if passed[index]:
            highest, failures_in_a_row = index, 0
        elif index >= start_index:
            failures_in_a_row += 1
            if failures_in_a_row >= search.failures_to_stop:
                break
        index += 1
    index = bottom - 1
    while highest is None and index >= 0 and len(trials) < search.max_trials:
        passed[index] = run("scan", grid[index], search.seed)
        if passed[index]:
            highest = index
        index -= 1
    if highest is None:
        return RateSearchResult(0.0, False, tuple(trials), None)

    # 2. Bisect the highest passing bracket.
    low = grid[highest]
    high = grid[highest + 1] if passed.get(highest + 1) is False else None
    while high is not None and (high - low) / low > search.tolerance and len(trials) < search.max_trials:
        middle = (low + high) / 2.0
        if run("bisect", middle, search.seed):
            low = middle
        else:
            high = middle
    bracket = (low, high)

    # 3. Confirm on the second seed: the highest pass, one step down, then lower first-seed passes.
    first_seed_passes = sorted({t.rate for t in trials if t.passed and t.seed == search.seed}, reverse=True)
    candidate = low
    for attempt in range(search.confirm_attempts):
        if run("confirm", candidate, search.confirm_seed):
            return RateSearchResult(candidate, True, tuple(trials), bracket)
        below = candidate * (1.0 - search.tolerance)
        if attempt == 0 and below >= search.low:
            following: float | None = below
        else:
            following = next((r for r in first_seed_passes if r <= below * (1 + 1e-12)), None)
        if following is None or attempt + 1 == search.confirm_attempts:
            break
        candidate = following
    return RateSearchResult(candidate, False, tuple(trials), bracket)

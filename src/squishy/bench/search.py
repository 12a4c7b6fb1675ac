"""Goodput at the SLO: the highest offered rate at which ≥ 99% of requests meet their SLO.

As in Nexus and MLPerf's Server scenario. Each step is a full open-loop run (its own warm-up, not
counted, then a fixed measured window) at one total rate; a mix keeps its proportions, every model's
rate scaled by the same factor, and a step passes when *every* model meets the target. The search
doubles (or halves) the rate until it brackets the knee, bisects until the bracket is within
``tolerance``, then confirms the best passing rate with a fresh run (stepping down by ``tolerance`` if
that run fails: one lucky step must not make the headline).

A step that can no longer pass (more requests have missed than the target allows) stops at once,
which keeps overloaded steps short; the server gets ``cooldown_s`` to drain between steps.

    from squishy.bench import SearchSettings, search
    found = search(config, SearchSettings(tolerance=0.05), isolate=True)
    found.rate_per_s, found.confirmed, found.best.overall.goodput_per_s
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squishy.bench.config import BenchConfig
from squishy.bench.errors import BenchError
from squishy.bench.run import Prepared, RunResult, isolated_executor, prepare, run


@dataclass(frozen=True)
class SearchSettings:
    met_fraction: float = 0.99  # the SLO target: this share of requests within the SLO
    start_rate_per_s: float | None = None  # None: the config's total rate
    min_rate_per_s: float = 1.0
    max_rate_per_s: float = 1e6
    tolerance: float = 0.05  # bisection stops when (fail - pass) / pass ≤ this
    max_steps: int = 20  # ramp and bisection steps; confirmation runs come on top
    confirm_attempts: int = 3
    cooldown_s: float = 1.0  # pause between steps: an overloaded step leaves the server a queue to drain
    stop_early: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.met_fraction <= 1:
            raise BenchError(f"the SLO target must be a fraction in (0, 1], got {self.met_fraction}")
        if not 0 < self.min_rate_per_s <= self.max_rate_per_s:
            raise BenchError(f"need 0 < min rate ≤ max rate, got {self.min_rate_per_s} and {self.max_rate_per_s}")
        if not 0 < self.tolerance < 1:
            raise BenchError(f"the tolerance must be a fraction in (0, 1), got {self.tolerance}")
        if self.max_steps < 1 or self.confirm_attempts < 1:
            raise BenchError("a search needs at least one step and one confirmation attempt")


@dataclass(frozen=True)
class SearchStep:
    phase: str  # "ramp", "bisect" or "confirm"
    rate_per_s: float  # total offered rate of the step
    passed: bool
    result: RunResult

    def to_dict(self) -> dict[str, Any]:
        overall = self.result.overall
        return {
            "phase": self.phase,
            "rate_per_s": self.rate_per_s,
            "passed": self.passed,
            "cut_short": self.result.cut_short,
            "met_fraction": {m: s.met_fraction for m, s in self.result.per_model.items()},
            "goodput_per_s": overall.goodput_per_s,
            "p99_ms": None if math.isnan(overall.p99_ms) else overall.p99_ms,
            "bad_rate": overall.bad_rate,
            "generator_cpu_share": self.result.generator.cpu_share,
        }


@dataclass(frozen=True)
class SearchResult:
    rate_per_s: float  # highest total offered rate meeting the target; 0 if even the minimum failed
    confirmed: bool  # a confirmation run at rate_per_s passed
    met_fraction: float
    steps: tuple[SearchStep, ...]

    @property
    def best(self) -> RunResult | None:
        """The confirming run (or the last confirmation attempt), whose figures go with the headline."""
        confirms = [s for s in self.steps if s.phase == "confirm"]
        return confirms[-1].result if confirms else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "goodput_rate_per_s": self.rate_per_s,
            "confirmed": self.confirmed,
            "met_fraction_target": self.met_fraction,
            "steps": [s.to_dict() for s in self.steps],
            "best": best.to_dict() if best is not None else None,
        }


Runner = Callable[[BenchConfig, float | None], RunResult]


def search(
    config: BenchConfig,
    settings: SearchSettings | None = None,
    *,
    prepared: Prepared | None = None,
    progress: bool = False,
    isolate: bool = False,
    on_step: Callable[[SearchStep], None] | None = None,
) -> SearchResult:
    """Find the goodput at the SLO for ``config``'s mix (its rates give the proportions and the start)."""
    settings = settings or SearchSettings()
    prepared = prepared or prepare(config)
    if not isolate:
        return _search(config, settings, _in_process(prepared, progress), on_step)
    with isolated_executor() as executor:
        return _search(config, settings, _in_child(executor, prepared, progress), on_step)


def _in_process(prepared: Prepared, progress: bool) -> Runner:
    def runner(config: BenchConfig, stop_below: float | None) -> RunResult:
        return run(config, prepared=prepared, progress=progress, stop_below_met_fraction=stop_below)

    return runner


def _in_child(executor: concurrent.futures.Executor, prepared: Prepared, progress: bool) -> Runner:
    def runner(config: BenchConfig, stop_below: float | None) -> RunResult:
        future = executor.submit(run, config, prepared=prepared, progress=progress, stop_below_met_fraction=stop_below)
        return future.result()

    return runner


def _search(
    config: BenchConfig,
    settings: SearchSettings,
    runner: Runner,
    on_step: Callable[[SearchStep], None] | None,
) -> SearchResult:
    steps: list[SearchStep] = []
    target = settings.met_fraction

    def trial(rate_per_s: float, phase: str) -> bool:
        if steps:
            time.sleep(settings.cooldown_s)
        result = runner(config.with_total_rate(rate_per_s), target if settings.stop_early else None)
        step = SearchStep(phase, rate_per_s, result.passed(target), result)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return step.passed

    def clamp(rate_per_s: float) -> float:
        return min(settings.max_rate_per_s, max(settings.min_rate_per_s, rate_per_s))

    passing: float | None = None  # highest rate seen to pass
    failing: float | None = None  # lowest rate seen to fail
    rate = clamp(settings.start_rate_per_s or config.total_rate_per_s)
    while len(steps) < settings.max_steps:
        if trial(rate, "ramp"):
            passing = rate
            if failing is not None or rate >= settings.max_rate_per_s:
                break
            rate = clamp(rate * 2)
        else:
            failing = rate
            if passing is not None or rate <= settings.min_rate_per_s:
                break
            rate = clamp(rate / 2)
    if passing is None:
        return SearchResult(0.0, False, target, tuple(steps))

    while (
        failing is not None and (failing - passing) / passing > settings.tolerance and len(steps) < settings.max_steps
    ):
        middle = (passing + failing) / 2
        if trial(middle, "bisect"):
            passing = middle
        else:
            failing = middle

    rate = passing
    for attempt in range(settings.confirm_attempts):
        if attempt:
            rate = clamp(rate * (1 - settings.tolerance))
        if trial(rate, "confirm"):
            return SearchResult(rate, True, target, tuple(steps))
    return SearchResult(rate, False, target, tuple(steps))

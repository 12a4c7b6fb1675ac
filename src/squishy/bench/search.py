"""Goodput at the SLO: the highest offered rate at which ≥ 99% of requests meet their SLO.

As in Nexus and MLPerf's Server scenario. Each step is a full open-loop run (its own warm-up, not
counted, then a fixed measured window) at one total rate; a mix keeps its proportions, every model's
rate scaled by the same factor, and a step passes when *every* model meets the target.

The algorithm is ``squishy.search`` (the simulator's too): a geometric scan from below the start up to
where steps keep failing, since pass/fail need not be monotone in the rate; bisection inside the
highest passing bracket to ``tolerance``; then confirmation on a second seed (``config.seed + 1``:
other arrivals), stepping down, then back to lower passing rates, if it fails. This module is the glue
that turns a rate and a seed into a real run. ``SearchResult.curve`` is every step by rate: the
pass/fail curve, which ``squishy bench --search`` prints.

A step that can no longer pass (more requests have missed than the target allows) stops at once,
which keeps overloaded steps short; the server gets ``cooldown_s`` to drain between steps.

    from squishy.bench import SearchSettings, search
    found = search(config, SearchSettings(tolerance=0.05), isolate=True)
    found.rate_per_s, found.confirmed, found.best.overall.goodput_per_s, found.curve
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squishy.bench.config import BenchConfig
from squishy.bench.errors import BenchError
from squishy.bench.run import Prepared, RunResult, isolated_executor, prepare, run
from squishy.search import RateSearch, Trial, highest_passing_rate


@dataclass(frozen=True)
class SearchSettings:
    met_fraction: float = 0.99  # the SLO target: this share of requests within the SLO
    start_rate_per_s: float | None = None  # None: the config's total rate
    min_rate_per_s: float = 1.0
    max_rate_per_s: float = 1e6
    tolerance: float = 0.05  # bisection stops when (fail - pass) / pass ≤ this
    max_steps: int = 20  # scan and bisection steps; confirmation runs come on top
    confirm_attempts: int = 3
    cooldown_s: float = 1.0  # pause between steps: an overloaded step leaves the server a queue to drain
    stop_early: bool = True
    grid_ratio: float = 2.0  # between neighbouring scan steps (steps are expensive: a coarse grid)
    scan_from: float = 4.0  # the scan starts this factor below the start rate
    failures_to_stop: int = 2  # failing scan steps in a row, above the start and every pass, end the scan

    def __post_init__(self) -> None:
        if not 0 < self.met_fraction <= 1:
            raise BenchError(f"the SLO target must be a fraction in (0, 1], got {self.met_fraction}")
        if not 0 < self.min_rate_per_s <= self.max_rate_per_s:
            raise BenchError(f"need 0 < min rate ≤ max rate, got {self.min_rate_per_s} and {self.max_rate_per_s}")
        if not 0 < self.tolerance < 1:
            raise BenchError(f"the tolerance must be a fraction in (0, 1), got {self.tolerance}")
        if self.max_steps < 1 or self.confirm_attempts < 1:
            raise BenchError("a search needs at least one step and one confirmation attempt")
        if not self.grid_ratio > 1 or not self.scan_from >= 1 or self.failures_to_stop < 1:
            raise BenchError("the scan needs a grid ratio > 1, a start at or below the start rate, one failure to stop")

    def rate_search(self, start_rate_per_s: float, seed: int) -> RateSearch:
        """The shared algorithm's settings: from ``start_rate_per_s`` (clamped to the bounds), seeds
        ``seed`` and ``seed + 1``."""
        return RateSearch(
            start=min(self.max_rate_per_s, max(self.min_rate_per_s, start_rate_per_s)),
            floor=self.min_rate_per_s,
            ceiling=self.max_rate_per_s,
            tolerance=self.tolerance,
            grid_ratio=self.grid_ratio,
            scan_from=self.scan_from,
            failures_to_stop=self.failures_to_stop,
            max_trials=self.max_steps,
            confirm_attempts=self.confirm_attempts,
            seed=seed,
            confirm_seed=seed + 1,
        )


@dataclass(frozen=True)
class SearchStep:
    phase: str  # "scan", "bisect" or "confirm"
    rate_per_s: float  # total offered rate of the step
    passed: bool
    result: RunResult
    seed: int = 0  # the arrivals' seed: the config's, or the next one for confirmation

    @property
    def worst_met_fraction(self) -> float:
        """The lowest share of requests within the SLO over the models (what passes or fails the step)."""
        return min((s.met_fraction for s in self.result.per_model.values()), default=math.nan)

    def to_dict(self) -> dict[str, Any]:
        overall = self.result.overall
        return {
            "phase": self.phase,
            "rate_per_s": self.rate_per_s,
            "seed": self.seed,
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
    rate_per_s: float  # highest total offered rate meeting the target; 0 if no rate tried did
    confirmed: bool  # a confirmation run (another seed) at rate_per_s passed
    met_fraction: float
    steps: tuple[SearchStep, ...]  # in the order run

    @property
    def best(self) -> RunResult | None:
        """The confirming run (or the last confirmation attempt), whose figures go with the headline."""
        confirms = [s for s in self.steps if s.phase == "confirm"]
        return confirms[-1].result if confirms else None

    @property
    def curve(self) -> tuple[SearchStep, ...]:
        """Every step by rate (then seed): the pass/fail curve, not only its edge."""
        order = sorted(range(len(self.steps)), key=lambda i: (self.steps[i].rate_per_s, self.steps[i].seed, i))
        return tuple(self.steps[i] for i in order)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "goodput_rate_per_s": self.rate_per_s,
            "confirmed": self.confirmed,
            "met_fraction_target": self.met_fraction,
            "curve": [
                {
                    "rate_per_s": s.rate_per_s,
                    "seed": s.seed,
                    "passed": s.passed,
                    "met_fraction": s.worst_met_fraction,
                    "cut_short": s.result.cut_short,
                    "phase": s.phase,
                }
                for s in self.curve
            ],
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
    fresh_server: Callable[[], contextlib.AbstractContextManager[str]] | None = None,
) -> SearchResult:
    """Find the goodput at the SLO for ``config``'s mix (its rates give the proportions and the start).

    ``fresh_server`` (a context manager that starts a server and yields its URL for the config's protocol)
    runs every step against a server of its own: a step then measures the server's steady state at its
    rate, not its recovery from an earlier step's overload. Without it every step goes to ``config.url``,
    one after another."""
    settings = settings or SearchSettings()
    if any((m.arrivals or config.arrivals).kind == "replay" for m in config.models):
        raise BenchError("replayed send times do not change with the rate: search with trace:FILE instead")
    if fresh_server is not None and prepared is None:
        with fresh_server() as url:
            prepared = prepare(_at(config, url))
    prepared = prepared or prepare(config)
    if not isolate:
        return _search(config, settings, _on_servers(_in_process(prepared, progress), fresh_server), on_step)
    with isolated_executor() as executor:
        runner = _on_servers(_in_child(executor, prepared, progress), fresh_server)
        return _search(config, settings, runner, on_step)


def _on_servers(runner: Runner, fresh_server: Callable[[], contextlib.AbstractContextManager[str]] | None) -> Runner:
    if fresh_server is None:
        return runner

    def on_fresh(config: BenchConfig, stop_below: float | None) -> RunResult:
        with fresh_server() as url:
            return runner(_at(config, url), stop_below)

    return on_fresh


def _at(config: BenchConfig, url: str) -> BenchConfig:
    """``config`` aimed at the server at ``url`` (REST or gRPC, as the config's protocol)."""
    if config.protocol == "grpc":
        return dataclasses.replace(config, grpc_url=url)
    return dataclasses.replace(config, url=url)


def _in_process(prepared: Prepared, progress: bool) -> Runner:
    def runner(config: BenchConfig, stop_below: float | None) -> RunResult:
        return run(config, prepared=prepared, progress=progress, stop_below_met_fraction=stop_below)

    return runner


def _in_child(executor: concurrent.futures.Executor, prepared: Prepared, progress: bool) -> Runner:
    def runner(config: BenchConfig, stop_below: float | None) -> RunResult:
        future = executor.submit(run, config, prepared=prepared, progress=progress, stop_below_met_fraction=stop_below)
        return future.result()

    return runner


@dataclass(frozen=True)
class _Measured:
    """One step's run and its verdict: what the shared search sees of a step."""

    result: RunResult
    passed: bool


def _search(
    config: BenchConfig,
    settings: SearchSettings,
    runner: Runner,
    on_step: Callable[[SearchStep], None] | None,
) -> SearchResult:
    target = settings.met_fraction
    steps: list[SearchStep] = []

    def measure(rate_per_s: float, seed: int) -> _Measured:
        if steps:
            time.sleep(settings.cooldown_s)
        step_config = dataclasses.replace(config.with_total_rate(rate_per_s), seed=seed)
        result = runner(step_config, target if settings.stop_early else None)
        return _Measured(result, result.passed(target))

    def record(trial: Trial[_Measured]) -> None:
        step = SearchStep(trial.phase, trial.rate, trial.passed, trial.outcome.result, trial.seed)
        steps.append(step)
        if on_step is not None:
            on_step(step)

    start = settings.start_rate_per_s or config.total_rate_per_s
    found = highest_passing_rate(measure, settings.rate_search(start, config.seed), record)
    return SearchResult(found.rate, found.confirmed, target, tuple(steps))

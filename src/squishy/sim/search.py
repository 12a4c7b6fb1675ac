"""Throughput at a good-rate target: the highest offered load at which a system keeps ≥ 99% of
requests good, searched on the load scale with ``squishy.search`` (the load generator's algorithm too):
a √2 grid from a quarter of the start up to where probes keep failing (good/bad need not be monotone in
the load), bisection inside the highest passing bracket to 1%, then a confirmation run on fresh
arrivals (another seed), stepping down, then back to lower passing scales, if it fails.

Every probe is a pure function of (workload, system, scale, seed), so a search gives the same answer
wherever it runs; independent searches run in a process pool.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from squishy.profiles import Profile
from squishy.scheduler import Workload
from squishy.search import RateSearch, highest_passing_rate
from squishy.sim.simulation import SimConfig, Simulation
from squishy.sim.systems import SYSTEMS, DoesNotFit, plan_for

GOOD_TARGET = 0.99
RELATIVE_TOLERANCE = 0.01  # stop bisecting when the bracket is this narrow
GRID_RATIO = math.sqrt(2.0)  # between scan points (probes are cheap: a fine grid)
SCAN_FROM = 4.0  # the scan starts this factor below the initial scale
FAILURES_TO_STOP = 3  # failing scan points in a row (above the start and every pass) that end the scan
SCALE_RANGE = 256.0  # scales from initial / this to initial × this
MAX_PROBES = 30  # scan and bisection; confirmation on top
CONFIRM_ATTEMPTS = 4
CONFIRM_SEED_OFFSET = 1000  # confirmation runs on seed + this: other arrivals, other latencies


@dataclass(frozen=True)
class ProbeSpec:
    workload: Workload
    profiles: Mapping[str, Profile]
    system: str
    config: SimConfig
    cluster_backends: int | None
    plan_headroom: float = 1.0  # plan for this multiple of the offered load
    early_stop: bool = True  # stop a run once it clearly misses the target (searches only need pass/fail)


def probe(spec: ProbeSpec, scale: float, seed: int | None = None) -> dict[str, Any]:
    """Plan for the scaled load, simulate it, and report the outcome (``fits`` False: no plan fits)."""
    config = replace(spec.config, scale=scale, seed=spec.config.seed if seed is None else seed)
    if config.stop_bad_share is None and spec.early_stop:
        config = replace(config, stop_bad_share=3.0 * (1.0 - GOOD_TARGET))
    system = SYSTEMS[spec.system]
    scaled = spec.workload.scaled(scale * spec.plan_headroom)
    try:
        plan = plan_for(system, scaled, spec.profiles, spec.cluster_backends, config.host)
    except DoesNotFit:
        return {"scale": scale, "fits": False, "good_rate": 0.0, "backends": None}
    result = Simulation(spec.workload, spec.profiles, plan, system, config).run()
    overall = result.summary["overall"]
    return {
        "scale": scale,
        "fits": True,
        "offered_rate": result.summary["offered_rate"],
        "good_rate": overall["good_rate"],
        "bad_rate": overall["bad_rate"],
        "stopped_early": result.summary["stopped_early"],
        "late": overall["late"],
        "dropped": overall["dropped"],
        "sent": overall["sent"],
        "p99_ms": overall["p99_ms"],
        "backends": plan.num_backends,
        "lower_bound": round(plan.lower_bound, 4),
        "requests_resolved": result.summary["requests_resolved"],
    }


@dataclass(frozen=True)
class _Probed:
    """One probe's record and its verdict: what the shared search sees of a probe."""

    record: dict[str, Any]
    passed: bool


def max_good_scale(spec: ProbeSpec, initial_scale: float, target: float = GOOD_TARGET) -> dict[str, Any]:
    """The search: the confirmed scale (0 if no scale passed on both seeds), the throughput there, the
    probe there, every probe made (by scale), and the pass/fail curve over the offered rate."""
    base_rate = sum(s.rate for s in spec.workload.sessions) + sum(q.rate for q in spec.workload.queries)

    def trial(scale: float, seed: int) -> _Probed:
        outcome = probe(spec, scale, seed)
        outcome["seed"] = seed
        return _Probed(outcome, bool(outcome["fits"] and outcome["good_rate"] >= target))

    settings = RateSearch(
        start=initial_scale,
        floor=initial_scale / SCALE_RANGE,
        ceiling=initial_scale * SCALE_RANGE,
        tolerance=RELATIVE_TOLERANCE,
        grid_ratio=GRID_RATIO,
        scan_from=SCAN_FROM,
        failures_to_stop=FAILURES_TO_STOP,
        max_trials=MAX_PROBES,
        confirm_attempts=CONFIRM_ATTEMPTS,
        seed=spec.config.seed,
        confirm_seed=spec.config.seed + CONFIRM_SEED_OFFSET,
    )
    found = highest_passing_rate(trial, settings)
    probes = [{**t.outcome.record, "phase": t.phase} for t in found.trials]
    confirmed = found.rate if found.confirmed else 0.0
    at = next((p for p in reversed(probes) if p["scale"] == confirmed), None)
    curve = [
        {
            "scale": round(t.rate, 6),
            "rate": round(t.rate * base_rate, 3),
            "seed": t.seed,
            "passed": t.passed,
            "good_rate": t.outcome.record["good_rate"],
            "fits": t.outcome.record["fits"],
            "stopped_early": t.outcome.record.get("stopped_early", False),
            "phase": t.phase,
        }
        for t in found.curve
    ]
    return {
        "system": spec.system,
        "scale": round(confirmed, 6),
        "throughput": round(confirmed * base_rate, 3),
        "confirmed": found.confirmed,
        "at_throughput": at,
        "probes": sorted(probes, key=lambda p: (p["scale"], p["seed"])),
        "curve": curve,
    }


def parallel_map(
    function: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    workers: int | None = None,
    progress: Callable[[], None] | None = None,
) -> list[Any]:
    """``[function(*job) for job in jobs]`` on a process pool. Results come back in job order, so what a
    study writes does not depend on which worker finished first."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(function(*job))
            if progress:
                progress()
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(function, *job): index for index, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if progress:
                progress()
        return results

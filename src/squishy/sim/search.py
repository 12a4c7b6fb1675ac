"""Throughput at a good-rate target: the highest offered load at which a system keeps ≥ 99% of
requests good, found by bracketing, bisection on the load scale, then a confirmation run on fresh
arrivals (a different seed); a scale that fails confirmation is lowered until one passes.

Every probe is a pure function of (workload, system, scale, seed), so a search gives the same answer
wherever it runs; independent searches run in a process pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from squishy.profiles import Profile
from squishy.scheduler import Workload
from squishy.sim.simulation import SimConfig, Simulation
from squishy.sim.systems import SYSTEMS, DoesNotFit, plan_for

GOOD_TARGET = 0.99
RELATIVE_TOLERANCE = 0.01  # stop bisecting when the bracket is this narrow
CONFIRM_STEP = 0.97  # a scale that fails confirmation is multiplied by this and tried again
MAX_CONFIRMS = 6
MAX_BRACKET_STEPS = 8


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
        plan = plan_for(system, scaled, spec.profiles, spec.cluster_backends)
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


def max_good_scale(spec: ProbeSpec, initial_scale: float, target: float = GOOD_TARGET) -> dict[str, Any]:
    """The search: returns the confirmed scale, the throughput there, and every probe made."""
    probes: list[dict[str, Any]] = []

    def passes(scale: float, seed: int | None = None) -> bool:
        outcome = probe(spec, scale, seed)
        outcome["seed"] = spec.config.seed if seed is None else seed
        probes.append(outcome)
        return outcome["fits"] and outcome["good_rate"] >= target

    low, high = 0.0, None
    scale = initial_scale
    for _ in range(MAX_BRACKET_STEPS):
        if passes(scale):
            low = scale
            if high is not None:
                break
            scale *= 2.0
        else:
            high = scale
            if low > 0:
                break
            scale /= 2.0
    if high is None:
        high = low * 2.0
    while low > 0 and (high - low) > RELATIVE_TOLERANCE * high:
        middle = (low + high) / 2.0
        if passes(middle):
            low = middle
        else:
            high = middle
    confirmed = low
    for _ in range(MAX_CONFIRMS):
        if confirmed <= 0 or passes(confirmed, spec.config.seed + 1000):
            break
        confirmed *= CONFIRM_STEP
    else:
        confirmed = 0.0
    at = next((p for p in reversed(probes) if p["scale"] == confirmed), None)
    base_rate = sum(s.rate for s in spec.workload.sessions) + sum(q.rate for q in spec.workload.queries)
    return {
        "system": spec.system,
        "scale": round(confirmed, 6),
        "throughput": round(confirmed * base_rate, 3),
        "at_throughput": at,
        "probes": sorted(probes, key=lambda p: (p["scale"], p["seed"])),
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

"""The Nexus case studies behind ``squishy simulate NAME``: each takes a scenario, runs the simulations it
needs, and returns a JSON-ready dict (no wall-clock figures: same seed, same results).

- ``drop-policy``: early vs lazy drop on one backend (paper Section 6.3 / Fig. 11 setup).
- ``throughput``: throughput at 99% good for squishy, the baselines and the ablations (game, traffic).
- ``optimality``: backends squishy uses at its highest 99%-good load vs the lower bound there.
- ``large``: 100 backends for a simulated hour under stepped Poisson load, with the control loop.
- ``bursty``: gamma arrivals (CV 2, 4): where a plan sized for the mean breaks and the headroom it needs.
- ``run``: one simulation of one system (a scenario file without a study).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from squishy.arrivals import Arrivals, RateSchedule
from squishy.control import ControlConfig
from squishy.control.fitting import largest_fitting
from squishy.errors import WorkloadError
from squishy.profiles import Profile
from squishy.scheduler import Session, Settings, Workload, make_plan
from squishy.sim.metrics import Metrics
from squishy.sim.scenario import Scenario, load_scenario
from squishy.sim.search import GOOD_TARGET, ProbeSpec, max_good_scale, parallel_map, probe
from squishy.sim.simulation import HostSpec, SimConfig, Simulation
from squishy.sim.systems import FILL_TOLERANCE, SYSTEMS, plan_for, planning_workload

Progress = Callable[[int], None]  # called with the number of jobs just finished


@dataclass(frozen=True)
class StudyOptions:
    seed: int | None = None  # overrides the scenario's seed
    quick: bool = False  # a tiny version of the study (tests): short runs, fewer points
    workers: int | None = None  # processes for independent runs (default: all cores)


def sim_config(scenario: Scenario, options: StudyOptions, **overrides: Any) -> SimConfig:
    sim = scenario.simulation
    config = SimConfig(
        duration_s=float(sim.get("duration_s", 30.0)),
        warmup_s=float(sim.get("warmup_s", 2.0)),
        seed=int(options.seed if options.seed is not None else sim.get("seed", 0)),
        network_ms=float(sim.get("network_ms", 1.0)),
        model_load_ms=float(sim.get("model_load_ms", 2000.0)),
        arrivals=Arrivals.parse(sim.get("arrivals", "poisson"), scenario.path.parent),
        rate_schedule=RateSchedule.parse(sim.get("rate_schedule")),
        scale=float(sim.get("scale", 1.0)),
        host=HostSpec.from_dict(sim["host"]) if sim.get("host") else None,
    )
    if options.quick:
        config = replace(config, duration_s=min(config.duration_s, 2.5), warmup_s=min(config.warmup_s, 0.5))
    return replace(config, **overrides)


def base_rate(workload: Workload) -> float:
    return sum(s.rate for s in workload.sessions) + sum(q.rate for q in workload.queries)


def cluster_scale(workload: Workload, profiles: Mapping[str, Profile], backends: int) -> float:
    """The load scale at which squishy's lower bound equals the cluster: where searches start."""
    bound = make_plan(workload, profiles).lower_bound
    return backends / bound if bound > 0 else 1.0


def initial_scale(system: str, cluster: float) -> float:
    # Searches start near where each system's answer is likely; the bracket moves from there.
    spec = SYSTEMS[system]
    if spec.policy == "batch-oblivious" and not spec.overlap:
        return cluster / 16.0
    return cluster if spec.policy == "squishy" else cluster / 2.0


def _search_job(spec: ProbeSpec, start: float) -> dict[str, Any]:
    return max_good_scale(spec, start)


def _probe_job(spec: ProbeSpec, scale: float) -> dict[str, Any]:
    return probe(spec, scale)


# ------------------------------------------------------------------------------------ drop policy
def drop_policy(scenario: Scenario, options: StudyOptions, progress: Progress) -> dict[str, Any]:
    """One backend whose best throughput under the SLO is ``optimum_rate``; linear profiles
    ℓ(b) = αb + β with β chosen so that max_b {b/ℓ(b) : 2ℓ(b) ≤ SLO} = optimum. Bad rate of early vs
    lazy drop at ``load`` × optimum, and each policy's throughput at 99% good (Poisson)."""
    sim = scenario.simulation
    slo = float(sim.get("slo_ms", 100.0))
    optimum = float(sim.get("optimum_rate", 500.0))
    load = float(sim.get("load", 0.9))
    alphas = [float(a) for a in sim.get("alphas", [1.0, 1.2, 1.4, 1.6, 1.8])]
    arrivals = [str(a) for a in sim.get("arrival_kinds", ["poisson", "uniform"])]
    if options.quick:
        alphas = alphas[:: max(1, len(alphas) - 1)]
    config = sim_config(scenario, options)
    # With 2ℓ(B) = SLO at the optimum: ℓ(B) = SLO/2 and B/ℓ(B) = optimum, so B = optimum·SLO/2000.
    batch = round(optimum * slo / 2000.0)
    cases = []
    jobs: list[tuple[Any, ...]] = []
    for alpha in alphas:
        beta = slo / 2.0 - alpha * batch
        if beta < 0:
            raise WorkloadError(f"drop-policy: alpha {alpha} ms is too large for batch {batch} within {slo} ms")
        profile = Profile.linear("model", alpha, beta, max_batch=2 * batch, device="sim")
        workload = Workload(sessions=(Session("model", slo, optimum),), settings=Settings())
        profiles = {"model": profile}
        for kind in arrivals:
            for system in ("squishy", "no-early-drop"):
                run_config = replace(config, scale=load, arrivals=Arrivals.parse(kind), network_ms=0.0)
                spec = ProbeSpec(workload, profiles, system, run_config, 1, early_stop=False)
                jobs.append((_probe_job, spec, load))
                cases.append({"alpha_ms": alpha, "beta_ms": round(beta, 6), "arrivals": kind, "system": system})
        for system in ("squishy", "no-early-drop"):
            spec = ProbeSpec(workload, profiles, system, replace(config, network_ms=0.0), 1)
            jobs.append((_search_job, spec, load))
            cases.append({"alpha_ms": alpha, "beta_ms": round(beta, 6), "arrivals": "poisson", "system": system})
    results = _run_jobs(jobs, options, progress)
    runs = []
    searches = []
    for case, result in zip(cases, results, strict=True):
        drop = "early" if case["system"] == "squishy" else "lazy"
        if "probes" in result:
            searches.append(
                {
                    **case,
                    "drop": drop,
                    "throughput": result["throughput"],
                    "throughput_share_of_optimum": round(result["throughput"] / optimum, 4),
                }
            )
        else:
            runs.append(
                {
                    **case,
                    "drop": drop,
                    "bad_rate": result["bad_rate"],
                    "late": result["late"],
                    "dropped": result["dropped"],
                    "sent": result["sent"],
                    "batch": batch,
                }
            )
    return {
        "study": "drop-policy",
        "slo_ms": slo,
        "optimum_rate": optimum,
        "load": load,
        "optimum_batch": batch,
        "duration_s": config.duration_s,
        "runs": runs,
        "throughput_at_99": searches,
    }


# ------------------------------------------------------------------------------------- throughput
def throughput(scenario: Scenario, options: StudyOptions, progress: Progress) -> dict[str, Any]:
    sim = scenario.simulation
    cluster = int(sim.get("cluster_backends", 16))
    systems = [str(s) for s in sim.get("systems", ["squishy", "clipper", "tf-serving"])]
    if options.quick:
        systems = systems[:3]
    config = sim_config(scenario, options)
    start = cluster_scale(scenario.workload, scenario.profiles, cluster)
    jobs = [
        (
            _search_job,
            ProbeSpec(scenario.workload, scenario.profiles, system, config, cluster),
            initial_scale(system, start),
        )
        for system in systems
    ]
    results = dict(zip(systems, _run_jobs(jobs, options, progress), strict=True))
    squishy = results.get("squishy", {}).get("throughput", 0.0)
    summary = {}
    for system, result in results.items():
        value = result["throughput"]
        summary[system] = {
            "throughput": value,
            "squishy_over_this": round(squishy / value, 3) if value else None,
            "share_of_squishy": round(value / squishy, 4) if squishy else None,
            "backends_at_throughput": (result["at_throughput"] or {}).get("backends"),
            "description": SYSTEMS[system].description,
        }
    baselines = [summary[s]["throughput"] for s in ("clipper", "tf-serving") if s in summary]
    return {
        "study": "throughput",
        "scenario": scenario.name,
        "cluster_backends": cluster,
        "host": _host_summary(config),
        "base_rate": base_rate(scenario.workload),
        "duration_s": config.duration_s,
        "good_target": GOOD_TARGET,
        "summary": summary,
        "squishy_over_best_baseline": round(squishy / max(baselines), 3) if baselines and max(baselines) else None,
        "paper": dict(sim.get("paper", {})),
        "searches": results,
    }


# ------------------------------------------------------------------------------------- optimality
def optimality(scenario: Scenario, options: StudyOptions, progress: Progress) -> dict[str, Any]:
    """For each app: squishy's highest 99%-good load on the cluster, backends used there vs the lower
    bound Σ R/T(B) at that same load (with the plan's margins, and with the raw profiles)."""
    apps = [str(a) for a in scenario.simulation.get("apps", ["game", "traffic"])]
    loaded = [load_scenario(app) for app in apps]
    jobs = []
    for app in loaded:
        cluster = int(app.simulation.get("cluster_backends", 16))
        config = sim_config(app, options)
        start = cluster_scale(app.workload, app.profiles, cluster)
        jobs.append((_search_job, ProbeSpec(app.workload, app.profiles, "squishy", config, cluster), start))
    searches = _run_jobs(jobs, options, progress)
    out = {}
    for app, search in zip(loaded, searches, strict=True):
        scale = search["scale"]
        told = planning_workload(SYSTEMS["squishy"], app.workload, sim_config(app, options).host)
        workload = told.scaled(scale)
        plan = make_plan(workload, app.profiles)
        raw = make_plan(replace(workload, settings=replace(workload.settings, profile_inflation=1.0)), app.profiles)
        sweep = []
        for share in np.linspace(0.1, 1.0, 10 if not options.quick else 3).tolist():
            point = make_plan(told.scaled(scale * share), app.profiles)
            sweep.append(
                {
                    "scale": round(scale * share, 6),
                    "rate": round(base_rate(app.workload) * scale * share, 3),
                    "backends": point.num_backends,
                    "lower_bound": round(point.lower_bound, 4),
                }
            )
        out[app.name] = {
            "host": _host_summary(sim_config(app, options)),
            "scale": scale,
            "throughput": search["throughput"],
            "backends": plan.num_backends,
            "lower_bound": round(plan.lower_bound, 4),
            "ratio": round(plan.num_backends / plan.lower_bound, 4) if plan.lower_bound else None,
            "lower_bound_raw_profiles": round(raw.lower_bound, 4),
            "ratio_vs_raw_lower_bound": round(plan.num_backends / raw.lower_bound, 4) if raw.lower_bound else None,
            "good_rate": (search["at_throughput"] or {}).get("good_rate"),
            "sweep": sweep,
        }
    return {"study": "optimality", "apps": out, "paper": {"backends": 11.7, "lower_bound": 9.8, "ratio": 1.19}}


# ------------------------------------------------------------------------------------------ large
def large(scenario: Scenario, options: StudyOptions, progress: Progress) -> dict[str, Any]:
    """The cluster under stepped Poisson load with the control loop on, for a simulated hour. The control
    loop may plan at most ``cluster_backends``: when demand exceeds that, the plan admits the largest
    share of every session's rate that fits and early drop sheds the rest."""
    sim = scenario.simulation
    cluster = int(sim.get("cluster_backends", 100))
    control = ControlConfig.from_dict(sim.get("control"))
    config = sim_config(scenario, options, control=control, tick_ms=1000.0, capacity=cluster)
    if options.quick:
        factors = config.rate_schedule.factors[:2]
        starts = (0.0, min(config.rate_schedule.starts_s[1] if len(factors) > 1 else 2.0, 2.0))[: len(factors)]
        config = replace(config, duration_s=4.0, rate_schedule=RateSchedule(starts, factors))
    workload = planning_workload(SYSTEMS["squishy"], scenario.workload, config.host)
    initial_rates = workload.scaled(config.scale * config.rate_schedule.factor_at(0.0) * control.max_headroom)
    # The first plan, for the largest share of the initial load that fits the cluster (as plan_for
    # makes it), and that share as the re-plans report theirs (1: all of it).
    plan, share = make_plan(initial_rates, scenario.profiles), 1.0
    if plan.num_backends > cluster:
        share, plan = largest_fitting(
            lambda factor: make_plan(initial_rates.scaled(factor), scenario.profiles),
            cluster,
            start=1.0,
            upper=1.0,
            relative_tolerance=FILL_TOLERANCE,
        )
    initial = {"time_s": 0.0, "backends": plan.num_backends, "headroom": round(share, 4)}
    simulation = Simulation(workload, scenario.profiles, plan, "squishy", config)
    ticker = _TickProgress(simulation, progress)
    simulation.engine.schedule(0.0, 0, ticker)
    result = simulation.run()
    metrics = simulation.metrics
    seconds = int(config.duration_s)
    one_second = metrics.bad_rate_series(1)
    ten_seconds = metrics.bad_rate_series(10)
    starts = list(config.rate_schedule.starts_s)
    ends = [*starts[1:], config.duration_s]
    # Each load step (a segment of the schedule) is over capacity when the plans made for its load
    # admitted less than all of it (headroom < 1).
    segments = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        plans = [r for r in [initial, *simulation.replans] if start <= r["time_s"] < end]
        headroom = min((r["headroom"] for r in plans), default=None)
        segments.append(
            {
                "start_s": start,
                "end_s": end,
                "factor": config.rate_schedule.factors[index],
                "min_plan_headroom": headroom,
                "max_plan_backends": max((r["backends"] for r in plans), default=None),
                "over_capacity": headroom is not None and headroom < 1.0,
            }
        )
    steps = [
        {
            **_recovery(start, end, ten_seconds, simulation.replans, config.rate_schedule.factors, index),
            "over_capacity": segments[index]["over_capacity"],
        }
        for index, (start, end) in enumerate(zip(starts, ends, strict=True))
        if index > 0
    ]
    overall = result.summary["overall"]
    return {
        "study": "large",
        "scenario": scenario.name,
        "duration_s": config.duration_s,
        "cluster_backends": cluster,
        "load_scale": config.scale,
        "host": _host_summary(config),
        "overall": overall,
        "by_capacity": _bad_by_capacity(metrics, segments, config.warmup_s, seconds),
        "apps": _by_app(metrics, dict(sim.get("apps", {})), segments, simulation.replans, config.warmup_s, seconds),
        # Top-level requests (session requests and whole queries) and every inference request a backend
        # answered (query stages counted one by one).
        "requests_simulated": metrics.served_total,
        "inference_requests_simulated": int(
            metrics.served_total
            + simulation.stage_served.sum()
            + simulation.stage_dropped.sum()
            - _query_count(simulation)
        ),
        "sessions": result.summary["sessions"],
        "query_stages": result.summary["query_stages"],
        "backends_max": max(simulation.backend_series, default=0),
        "backends_min": min(simulation.backend_series, default=0),
        "plan_backends_max": max((r["backends"] for r in simulation.replans), default=plan.num_backends),
        "segments": segments,
        "steps": steps,
        "max_recovery_s": max((s["recovery_s"] for s in steps), default=0.0),
        "max_recovery_s_under_capacity": max((s["recovery_s"] for s in steps if not s["over_capacity"]), default=0.0),
        "replans": simulation.replans,
        "series": {
            "tick_s": 1.0,
            "sent": metrics.sent_series[:seconds].tolist(),
            "bad_rate_1s": one_second[:seconds],
            "bad_rate_10s": ten_seconds[:seconds],
            "backends": simulation.backend_series,
            "utilization": simulation.utilization_series,
        },
        "rate_schedule": {
            "starts_s": list(config.rate_schedule.starts_s),
            "factors": list(config.rate_schedule.factors),
        },
        "paper": {"bad_rate": 0.0027, "detect_s": 12},
    }


def _bad_by_capacity(
    metrics: Metrics,
    segments: list[dict[str, Any]],
    warmup_s: float,
    seconds: int,
    sources: list[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Requests sent and bad (by send time, after the warm-up) in the load steps under and over capacity,
    of ``sources`` (None: every source)."""
    rows = slice(None) if sources is None else sources
    sent = metrics.source_sent_series[rows, :seconds].sum(axis=0)
    bad = metrics.source_bad_series[rows, :seconds].sum(axis=0)
    out = {}
    for label, over in (("under_capacity", False), ("over_capacity", True)):
        mask = np.zeros(len(sent), dtype=bool)
        for segment in segments:
            if segment["over_capacity"] == over:
                mask[math.ceil(max(segment["start_s"], warmup_s)) : int(segment["end_s"])] = True
        total, failed = int(sent[mask].sum()), int(bad[mask].sum())
        out[label] = {
            "seconds": int(mask.sum()),
            "sent": total,
            "bad": failed,
            "bad_rate": round(failed / total, 6) if total else None,
        }
    return out


def _by_app(
    metrics: Metrics,
    apps: Mapping[str, Any],
    segments: list[dict[str, Any]],
    replans: list[dict[str, Any]],
    warmup_s: float,
    seconds: int,
) -> dict[str, dict[str, Any]]:
    """Per app (its sources by name prefix): totals, overall and under / over capacity, its 10 s bad rate
    over time and its recovery after each load step."""
    out = {}
    factors = tuple(segment["factor"] for segment in segments)
    for app, prefixes in apps.items():
        sources = [i for i, name in enumerate(metrics.names) if any(name.startswith(p) for p in prefixes)]
        if not sources:
            continue
        totals = metrics.totals(sources)
        ten_seconds = _window_bad_rate(
            metrics.source_sent_series[sources].sum(axis=0), metrics.source_bad_series[sources].sum(axis=0), 10
        )
        steps = [
            {
                **_recovery(segment["start_s"], segment["end_s"], ten_seconds, replans, factors, index),
                "over_capacity": segment["over_capacity"],
            }
            for index, segment in enumerate(segments)
            if index > 0
        ]
        out[str(app)] = {
            "sources": len(sources),
            "sent": totals["sent"],
            "bad_rate": totals["bad_rate"],
            "p99_ms": totals["p99_ms"],
            **_bad_by_capacity(metrics, segments, warmup_s, seconds, sources),
            "steps": steps,
            "max_recovery_s_under_capacity": max(
                (step["recovery_s"] for step in steps if not step["over_capacity"]), default=0.0
            ),
            "bad_rate_10s": ten_seconds[:seconds],
        }
    return out


def _window_bad_rate(sent: np.ndarray, bad: np.ndarray, window: int) -> list[float | None]:
    """Bad rate over the last ``window`` seconds, per second (None where nothing was sent): as
    ``Metrics.bad_rate_series``, for a group of sources."""
    kernel = np.ones(window, dtype=np.int64)
    sent_sum = np.convolve(sent, kernel)[: len(sent)]
    bad_sum = np.convolve(bad, kernel)[: len(bad)]
    return [round(b / n, 6) if n else None for b, n in zip(bad_sum.tolist(), sent_sum.tolist(), strict=True)]


def _host_summary(config: SimConfig) -> dict[str, Any] | None:
    host = config.host
    if host is None:
        return None
    return {
        "cores_per_backend": host.cores,
        "frontend_ms": host.costs.frontend_ms,
    }


def _query_count(simulation: Simulation) -> int:
    """Queries resolved (each is one top-level request, and its stage requests are counted separately)."""
    return int(simulation.queries.count)


class _TickProgress:
    """Reports simulated seconds to the progress bar (an event like any other: results do not change)."""

    def __init__(self, simulation: Simulation, progress: Progress) -> None:
        self.simulation = simulation
        self.progress = progress

    def __call__(self) -> None:
        engine = self.simulation.engine
        if engine.now_ms > 0:
            self.progress(10)
        if engine.now_ms + 10_000.0 <= self.simulation.end_ms:
            engine.schedule(engine.now_ms + 10_000.0, 0, self)


def _recovery(
    start_s: float,
    end_s: float,
    window_bad: list[float | None],
    replans: list[dict[str, Any]],
    factors: tuple[float, ...],
    index: int,
) -> dict[str, Any]:
    """How long after a load step the 10 s bad rate stays under 1% (until the next step)."""
    first, last = int(start_s), min(int(end_s), len(window_bad))
    values = [v if v is not None else 0.0 for v in window_bad[first:last]]
    recovered = 0
    for offset in range(len(values) - 1, -1, -1):
        if values[offset] >= 0.01:
            recovered = offset + 1
            break
    detect = next((r["time_s"] - start_s for r in replans if r["time_s"] >= start_s), None)
    return {
        "time_s": start_s,
        "from_factor": factors[index - 1],
        "to_factor": factors[index],
        "peak_bad_rate_10s": round(max(values, default=0.0), 6),
        "recovery_s": float(recovered),
        "recovered": recovered < len(values),  # False: still at 1% or more when the next step came
        "first_replan_after_s": None if detect is None else round(detect, 3),
    }


# ----------------------------------------------------------------------------------------- bursty
def bursty(scenario: Scenario, options: StudyOptions, progress: Progress) -> dict[str, Any]:
    """Gamma arrivals with CV 2 and 4 against Poisson, on the apps' clusters:
    - squishy's and the baselines' throughput at 99% good under each CV (same cluster, squishy's plans
      sized for the mean), with each search's pass/fail curve over the offered rate: under bursts
      passing need not be monotone in the load;
    - the same curve for squishy with plans for ``plan_headroom`` × the offered load (same cluster);
    - the good rate at squishy's Poisson 99%-good load with the plan sized for the mean (Nexus's rule);
    - the headroom h that restores 99% good at the Poisson load: plan for h × the mean (more backends).
    """
    sim = scenario.simulation
    apps = [str(a) for a in sim.get("apps", ["game", "traffic"])]
    cvs = [float(c) for c in sim.get("cvs", [2.0, 4.0])]
    baselines = [str(s) for s in sim.get("baselines", ["clipper", "tf-serving"])]
    plan_headroom = float(sim.get("plan_headroom", 1.5))
    if options.quick:
        apps, cvs = apps[:1], cvs[:1]
    loaded = [load_scenario(app) for app in apps]
    jobs: list[tuple[Any, ...]] = []
    keys = []
    for app in loaded:
        cluster = int(app.simulation.get("cluster_backends", 16))
        start = cluster_scale(app.workload, app.profiles, cluster)
        for cv in [1.0, *cvs]:
            arrivals = Arrivals.poisson() if cv == 1.0 else Arrivals.gamma(cv)
            config = sim_config(app, options, arrivals=arrivals)
            for system in ("squishy", *baselines):
                profiles = app.profiles
                spec = ProbeSpec(app.workload, profiles, system, config, cluster)
                jobs.append((_search_job, spec, initial_scale(system, start)))
                keys.append((app.name, cv, system))
            if cv != 1.0:
                spec = ProbeSpec(app.workload, app.profiles, "squishy", config, cluster, plan_headroom=plan_headroom)
                jobs.append((_search_job, spec, initial_scale("squishy", start) / plan_headroom))
                keys.append((app.name, cv, "squishy-headroom"))
    searches = dict(zip(keys, _run_jobs(jobs, options, progress), strict=True))
    # Second pass: at each app's Poisson 99% load, plans for the mean under bursts, and the headroom.
    jobs, keys2 = [], []
    for app in loaded:
        poisson_scale = searches[(app.name, 1.0, "squishy")]["scale"]
        for cv in cvs:
            config = sim_config(app, options, arrivals=Arrivals.gamma(cv))
            spec = ProbeSpec(app.workload, app.profiles, "squishy", config, None, early_stop=False)
            jobs.append((_probe_job, spec, poisson_scale))
            keys2.append((app.name, cv, "mean"))
            jobs.append((_headroom_job, spec, poisson_scale))
            keys2.append((app.name, cv, "headroom"))
    second = dict(zip(keys2, _run_jobs(jobs, options, progress), strict=True))
    out: dict[str, Any] = {}
    for app in loaded:
        rows = []
        curves: dict[str, dict[str, Any]] = {}
        poisson = searches[(app.name, 1.0, "squishy")]
        for cv in [1.0, *cvs]:
            row: dict[str, Any] = {"cv": cv}
            curve = curves[f"cv{cv:g}"] = {"plan_for_mean": searches[(app.name, cv, "squishy")]["curve"]}
            for system in ("squishy", *baselines):
                row[f"{system}_throughput"] = searches[(app.name, cv, system)]["throughput"]
                if system != "squishy":
                    curve[system] = searches[(app.name, cv, system)]["curve"]
            if cv != 1.0:
                with_headroom = searches[(app.name, cv, "squishy-headroom")]
                curve["plan_with_headroom"] = with_headroom["curve"]
                at_mean = second[(app.name, cv, "mean")]
                headroom = second[(app.name, cv, "headroom")]
                row["throughput_plan_with_headroom"] = with_headroom["throughput"]
                row["good_rate_plan_for_mean"] = at_mean["good_rate"]
                row["goodput_plan_for_mean"] = round(at_mean["offered_rate"] * at_mean["good_rate"], 3)
                row["headroom"] = headroom["headroom"]
                row["backends_with_headroom"] = headroom["backends"]
                row["backends_plan_for_mean"] = at_mean["backends"]
            row["squishy_throughput_share_of_poisson"] = (
                round(row["squishy_throughput"] / poisson["throughput"], 4) if poisson["throughput"] else None
            )
            rows.append(row)
        out[app.name] = {
            "host": _host_summary(sim_config(app, options)),
            "poisson_99_scale": poisson["scale"],
            "poisson_99_rate": poisson["throughput"],
            "plan_headroom": plan_headroom,
            "rows": rows,
            # Per arrival process: each search's pass/fail curve over the offered rate (every probe:
            # rate, seed, passed, good rate), for squishy's plans for the mean and with headroom, and
            # for the baselines.
            "curves": curves,
        }
    return {
        "study": "bursty",
        "apps": out,
        "searches": {f"{k[0]}/cv{k[1]:g}/{k[2]}": v for k, v in searches.items()},
    }


def _headroom_job(spec: ProbeSpec, scale: float) -> dict[str, Any]:
    """The least headroom h (plan for h × the offered load, any number of backends) that keeps 99% good."""
    low, high = 1.0, None
    outcome = probe(spec, scale)
    if outcome["good_rate"] >= GOOD_TARGET:
        return {"headroom": 1.0, "backends": outcome["backends"], "good_rate": outcome["good_rate"]}
    best: dict[str, Any] | None = None
    headroom = 1.5
    for _ in range(12):
        trial = probe(replace(spec, plan_headroom=headroom), scale)
        if trial["good_rate"] >= GOOD_TARGET:
            high, best = headroom, trial
        else:
            low = headroom
        if high is None:
            headroom *= 1.5
            if headroom > 20:
                break
        elif high - low <= 0.02 * high:
            break
        else:
            headroom = (low + high) / 2.0
    if best is None or high is None:
        return {"headroom": None, "backends": None, "good_rate": None}
    return {"headroom": round(high, 4), "backends": best["backends"], "good_rate": best["good_rate"]}


# -------------------------------------------------------------------------------------------- run
def single_run(scenario: Scenario, options: StudyOptions, progress: Progress) -> dict[str, Any]:
    sim = scenario.simulation
    system = str(sim.get("system", "squishy"))
    control = ControlConfig.from_dict(sim["control"]) if sim.get("control") else None
    config = sim_config(scenario, options, control=control, scale=float(sim.get("scale", 1.0)))
    cluster = sim.get("cluster_backends")
    profiles = scenario.profiles
    plan = plan_for(SYSTEMS[system], scenario.workload.scaled(config.scale), profiles, cluster, config.host)
    simulation = Simulation(scenario.workload, profiles, plan, system, config)
    result = simulation.run()
    progress(1)
    return {
        "study": "run",
        "scenario": scenario.name,
        **result.summary,
        "backends": plan.num_backends,
        "lower_bound": round(plan.lower_bound, 4),
        "replans": simulation.replans,
    }


STUDIES: dict[str, Callable[[Scenario, StudyOptions, Progress], dict[str, Any]]] = {
    "drop-policy": drop_policy,
    "throughput": throughput,
    "optimality": optimality,
    "large": large,
    "bursty": bursty,
    "run": single_run,
}


def study_size(scenario: Scenario, options: StudyOptions) -> int:
    """How many progress units a study reports (for the progress bar)."""
    sim = scenario.simulation
    kind = scenario.study
    if kind == "drop-policy":
        alphas = len(sim.get("alphas", [1.0, 1.2, 1.4, 1.6, 1.8]))
        alphas = min(alphas, 2) if options.quick else alphas
        return alphas * (2 * len(sim.get("arrival_kinds", ["poisson", "uniform"])) + 2)
    if kind == "throughput":
        return 3 if options.quick else len(sim.get("systems", [1, 2, 3]))
    if kind == "optimality":
        return len(sim.get("apps", [1, 2]))
    if kind == "large":
        return 4 if options.quick else int(float(sim.get("duration_s", 3600)))
    if kind == "bursty":
        apps = 1 if options.quick else len(sim.get("apps", [1, 2]))
        cvs = 1 if options.quick else len(sim.get("cvs", [2, 4]))
        return apps * ((cvs + 1) * (1 + len(sim.get("baselines", [1, 2]))) + 3 * cvs)
    return 1


def run_study(scenario: Scenario, options: StudyOptions, progress: Progress | None = None) -> dict[str, Any]:
    kind = scenario.study
    if kind not in STUDIES:
        raise WorkloadError(f"{scenario.path}: unknown study {kind!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[kind](scenario, options, progress or (lambda _: None))


def _run_jobs(jobs: list[tuple[Any, ...]], options: StudyOptions, progress: Progress) -> list[Any]:
    return parallel_map(_call, jobs, options.workers, lambda: progress(1))


def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)

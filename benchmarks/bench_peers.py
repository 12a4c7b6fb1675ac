"""squishy side by side with what users would otherwise run: Ray Serve and a plain FastAPI server.

    .venv/bin/python benchmarks/bench_peers.py [--systems squishy,ray,fastapi,squishy-ray] [--parts single,mix,fixed]
        [--duration 10] [--quick] [--json FILE]

Same machine, same run, same models (squishy's example repository, built fresh), same executor
(squishy's ONNX Runtime executor, 1 intra-op thread, 2 of them for the 2 cores), same wire format (OIP
REST with binary tensors, decoded by squishy's codec in every server), same open-loop generator and
the same arrival traces (Poisson, same seed), one server at a time:

- **squishy**: ``squishy serve --slots 2 --threads-per-slot 1``.
- **ray**: Ray Serve, one application per model (FastAPI ingress on the batched deployment itself),
  ``@serve.batch`` sized by ``peers.rules`` from the same profile squishy plans with: largest b with
  2ℓ(b) + o ≤ SLO, wait SLO − 2ℓ(b) − o, o = Ray's own latency per model, measured first with every
  wait at 0 (p99 − ℓ(1) under a light load; ``--ray-overhead-ms 0`` gives the bare rule); replicas
  split by compute share; ``max_ongoing_requests`` 1000; Ray's documented throughput flags on.
- **squishy-ray**: ``squishy serve --ray ADDRESS --threads-per-slot 1`` on a Ray cluster of this
  machine (``peers.ray_cluster``: a head with no CPUs and 2 one-CPU nodes, so 2 slots, each a Ray
  actor); the same plan, with each batch sent to its slot's actor. Its CPU and memory include the
  cluster's processes. The fixed part also measures a bare Ray actor call on that cluster (each model's
  batch-1 input sent, a small array back), the floor for any server that runs models in Ray actors.
- **fastapi**: FastAPI + uvicorn (uvloop, httptools), one ORT session per model, no batching; one
  process with a FIFO pool of 2 execution threads (``--fastapi-processes 2``: two processes × 1 thread).

Parts: (a) ``single``: resnet18-half (SLO 200 ms) alone, goodput at ≥ 99% within the SLO (search),
beside the physical limit 2 × max b/ℓ(b) with 2ℓ(b) ≤ SLO. (b) ``mix``: digits 20 ms, smallcnn 50 ms,
ppocr-cls 50 ms, resnet18-half 200 ms at Zipf rates 1 : 1/2 : 1/3 : 1/4, the highest total rate at
which *every* model keeps ≥ 99% within its SLO (``--mix-models`` picks others). (c) ``fixed``: the mix
at one total rate every system carries (half the lowest mix goodput found; a light 10 req/s per model
when some system met the SLOs at no rate; or ``--fixed-rate``), p50/p99 per model. For each: the
server's CPU (cores, summed over its processes), its resident memory (RSS and PSS summed over its
processes, peak while loaded), and the generator's CPU. Ratios are squishy / peer.

Every server gets 5 s of light, unmeasured load right after it starts (one-time costs), and is
stopped before the next one starts, so no idle server shares the cores with the one under test.
Profiles are measured at the start, once per scenario repository, with nothing else of this script
running, by the same code squishy uses (cached beside the models, so squishy reads the very same
numbers). The load generator shares the 2 cores with the server under test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import procs, rules
from squishy.bench import BenchConfig, ModelLoad, RunResult, SearchSettings, SearchStep, run, search
from squishy.bench.launch import start_squishy
from squishy.bench.report import environment, render_step, warnings
from squishy.examples import build_examples
from squishy.runtime.repository import ModelRepository

BENCHMARKS = Path(__file__).resolve().parent
SYSTEMS = ("squishy", "ray", "fastapi", "squishy-ray")
PARTS = ("single", "mix", "fixed")
WARM_UP_S = 5.0  # light load after each start, before anything is measured
CORES = 2  # slots × 1 thread for squishy, replicas for Ray, execution threads for FastAPI
SEED = 7
# Ray reads these at import in every one of its processes, so they go in the environment it starts with.
# They are what Ray's Performance Tuning guide recommends ("Enable throughput-optimized flags":
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 or the flags one by one), set one by one for two reasons: (1) the
# bundle also turns on the experimental direct ingress (a port per replica, meant to sit behind
# HAProxy), which a client cannot spread load over alone; (2) in Ray 2.60 the bundle flips
# RAY_SERVE_USE_GRPC_BY_DEFAULT only after the proxy has read it, so the proxy would keep actor calls.
# gRPC from proxy to replica measured here (mix at 100 req/s): 0.89 vs 1.23 cores, digits p99 26 vs 78 ms.
RAY_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    weights: tuple[tuple[str, float], ...]  # model → share of the total rate (normalized)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.weights)


SINGLE = Scenario("single", "(a) single model", (("resnet18-half", 1.0),))
MIX_MODELS = ("digits", "smallcnn", "ppocr-cls", "resnet18-half")


def zipf_mix(models: Sequence[str]) -> Scenario:
    """Rates 1 : 1/2 : 1/3 ... by popularity rank, in the order given (cheapest first by default: small
    models are usually the popular ones)."""
    total = sum(1 / k for k in range(1, len(models) + 1))
    return Scenario("mix", "(b) multi-model mix", tuple((m, 1 / k / total) for k, m in enumerate(models, 1)))


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    search: SearchSettings
    fixed_duration_s: float
    ray_overhead_ms: float | None  # o in Ray's batch rule; None: measure it
    fastapi_processes: int
    seed: int


@dataclass
class Prepared:
    """A scenario's repository, its models' SLOs and profiles, and the load mix at a nominal rate."""

    scenario: Scenario
    repository: Path
    slos_ms: dict[str, float]
    profiles: dict[str, dict[int, float]]  # cleaned ℓ(b) (ms), what squishy plans with
    raw_profiles: dict[str, dict[int, float]]  # as measured
    limit_per_s: float  # compute-only estimate of what the 2 cores can carry within the SLOs

    def config(self, url: str, total_rate_per_s: float, settings: Settings, duration_s: float) -> BenchConfig:
        loads = tuple(
            ModelLoad(m, rate_per_s=total_rate_per_s * w, slo_ms=self.slos_ms[m]) for m, w in self.scenario.weights
        )
        return BenchConfig(models=loads, url=url, duration_s=duration_s, warmup_s=settings.warmup_s, seed=settings.seed)


# ------------------------------------------------------------------------------------ preparing


def prepare(scenario: Scenario, workdir: Path) -> Prepared:
    repository = workdir / scenario.name
    results = build_examples(repository, only=scenario.models)
    missing = [r.name for r in results if r.status == "skipped"]
    if missing:
        raise SystemExit(f"cannot build {', '.join(missing)} here: {results}")
    repo = ModelRepository(repository)
    repo.load_all()
    slos, profiles, raw = {}, {}, {}
    for spec in repo.ready_specs():
        # squishy's own profiler and cache: squishy serve will read exactly these numbers.
        profile = repo.profile(spec, threads=1)
        slos[spec.name] = spec.slo_ms
        profiles[spec.name] = {b: profile.latency_ms(b) for b in profile.allowed_batches}
        cache = next((repository / spec.name / spec.version).glob("cpu-1t.profile-cache.json"))
        raw[spec.name] = {int(b): float(v) for b, v in json.loads(cache.read_text())["batch_ms"].items()}
    # Per request, the core time at the largest batch with 2ℓ(b) ≤ SLO; the mix's limit is the cores
    # over the weighted sum (compute only: no request handling, so no server reaches it).
    cost_ms = {}
    for model, table in profiles.items():
        fitting = [b for b in table if 2 * table[b] <= slos[model]] or [min(table)]
        cost_ms[model] = min(table[b] / b for b in fitting)
    limit = CORES * 1000.0 / sum(w * cost_ms[m] for m, w in scenario.weights)
    return Prepared(scenario, repository, slos, profiles, raw, limit)


# ------------------------------------------------------------------------------------- servers


@dataclass
class Running:
    url: str
    root_pid: int
    description: dict[str, Any]
    also_pids: tuple[int, ...] = ()  # process trees counted with the server's (the Ray cluster it drives)


@contextlib.contextmanager
def ray_cluster(python_path: str) -> Iterator[tuple[str, int]]:
    """A Ray cluster of CORES one-CPU nodes and a head with none, in a process of its own
    (``peers.ray_cluster``); yields its address and that process's pid."""
    command = [sys.executable, "-m", "peers.ray_cluster", "--nodes", str(CORES), "--cpus-per-node", "1"]
    environment_vars = {**os.environ, **RAY_ENVIRONMENT, "PYTHONPATH": python_path}
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command, text=True, env=environment_vars, **pipes)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("address "):
            raise RuntimeError(f"the Ray cluster did not start (exit {process.poll()}): {line!r}")
        os.environ.update({k: RAY_ENVIRONMENT[k] for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")})
        yield line.split()[1], process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def actor_call_floor_ms(address: str, prepared: Prepared, calls: int = 400) -> dict[str, float]:
    """p50 of a bare Ray actor call on the cluster, per model: its batch-1 input sent, a small array back;
    what any system that runs a model in a Ray actor pays at least."""
    import numpy as np
    import ray

    from squishy.runtime.api import DATATYPES

    @ray.remote(num_cpus=0)
    class Echo:
        def call(self, inputs: dict[str, Any]) -> dict[str, Any]:
            return {"y": np.zeros(16, np.float32)}

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        actor = Echo.remote()
        ray.get(actor.call.remote({}))
        floors = {}
        repository = ModelRepository(prepared.repository)
        repository.load_all()
        for spec in repository.ready_specs():
            inputs = {t.name: np.zeros((1, *(max(d, 1) for d in t.dims)), DATATYPES[t.datatype]) for t in spec.inputs}
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                ray.get(actor.call.remote(inputs))
                times.append(time.perf_counter() - start)
            floors[spec.name] = 1000.0 * float(np.median(times[calls // 10 :]))
        ray.kill(actor)
        return floors
    finally:
        ray.shutdown()


@contextlib.contextmanager
def serving(system: str, prepared: Prepared, settings: Settings, log_dir: Path) -> Iterator[Running]:
    """Start ``system`` on the scenario's repository; stop it (and everything it started) afterwards."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{system}-{prepared.scenario.name}-{int(time.time())}.log"
    python_path = os.pathsep.join(p for p in (str(BENCHMARKS), os.environ.get("PYTHONPATH", "")) if p)
    if system in ("squishy", "squishy-ray"):
        args = ["--threads-per-slot", "1", "--log-level", "warning"]
        with contextlib.ExitStack() as stack:
            extra: dict[str, Any] = {}
            also: tuple[int, ...] = ()
            if system == "squishy-ray":
                address, cluster_pid = stack.enter_context(ray_cluster(python_path))
                extra["actor_call_floor_ms"] = actor_call_floor_ms(address, prepared)
                args = ["--ray", address, *args]
                also = (cluster_pid,)
            else:
                args = ["--slots", str(CORES), *args]
            server = start_squishy(prepared.repository, args)
            try:
                warm_up(server.http_url, prepared, settings)
                command = "squishy serve " + " ".join(args)
                yield Running(server.http_url, server.process.pid, {"command": command, **extra}, also)
            finally:
                server.stop()
                log_path.write_text("".join(server.output))
        return
    port = procs.free_port()
    calibrate = False
    if system == "ray":
        rates = dict(prepared.scenario.weights)
        calibrate = settings.ray_overhead_ms is None
        overhead = 0.0 if settings.ray_overhead_ms is None else settings.ray_overhead_ms
        plans = rules.ray_plan(prepared.profiles, prepared.slos_ms, rates, cores=CORES, overhead_ms=overhead)
        plan_path = log_dir / f"ray-plan-{prepared.scenario.name}.json"
        _write_plan(plan_path, rules.no_wait(plans) if calibrate else plans, generation=0)
        command = [sys.executable, "-m", "peers.ray_server", "--repository", str(prepared.repository)]
        command += ["--port", str(port), "--plan", str(plan_path), "--cores", str(CORES)]
        environment_vars = {**RAY_ENVIRONMENT, "PYTHONPATH": python_path}
        ready = [f"/v2/models/{p.model}/ready" for p in plans]
        description: dict[str, Any] = {"deployments": [p.to_dict() for p in plans], "environment": RAY_ENVIRONMENT}
    elif system == "fastapi":
        processes = settings.fastapi_processes
        threads = max(1, CORES // processes)
        command = [sys.executable, "-m", "peers.fastapi_server", "--repository", str(prepared.repository)]
        command += ["--port", str(port), "--processes", str(processes), "--threads", str(threads)]
        environment_vars = {"PYTHONPATH": python_path}
        ready = ["/v2/health/ready"]
        description = {"processes": processes, "execution_threads_per_process": threads, "batching": False}
    else:
        raise ValueError(f"unknown system {system!r}")
    server = procs.Server(system, command, port=port, ready_paths=ready, env=environment_vars, log_path=log_path)
    try:
        warm_up(server.url, prepared, settings)
        if calibrate:
            description.update(calibrate_ray(server, prepared, settings, plan_path, log_path))
        yield Running(server.url, server.process.pid, {**description, "command": " ".join(command[1:])})
    finally:
        stragglers = server.stop()
        if stragglers:
            print(f"  {system}: ended {len(stragglers)} process(es) left after shutdown", file=sys.stderr)


def warm_up(url: str, prepared: Prepared, settings: Settings) -> None:
    """A few seconds of light load on every model, not measured, right after start: first requests pay
    one-time costs (ORT's first runs, connection set-up, Ray's lazy routing state) in every system."""
    loads = tuple(ModelLoad(m, rules.CALIBRATION_RATE_PER_S, prepared.slos_ms[m]) for m in prepared.scenario.models)
    run(BenchConfig(models=loads, url=url, duration_s=WARM_UP_S, warmup_s=0.0, seed=settings.seed + 2), isolate=True)


def _write_plan(path: Path, plans: Sequence[rules.RayModelPlan], generation: int) -> None:
    path.write_text(json.dumps({"generation": generation, "deployments": [p.to_dict() for p in plans]}, indent=2))


def calibrate_ray(
    server: procs.Server, prepared: Prepared, settings: Settings, plan_path: Path, log_path: Path
) -> dict[str, Any]:
    """Measure o (Ray's own latency per model: p99 with no batch wait, light load, less ℓ(1)), then
    apply the rule's settings with it in place (SIGHUP: the server re-reads the plan file)."""
    models = prepared.scenario.models
    loads = tuple(ModelLoad(m, rules.CALIBRATION_RATE_PER_S, prepared.slos_ms[m]) for m in models)
    config = BenchConfig(
        models=loads,
        url=server.url,
        duration_s=max(6.0, settings.duration_s),
        warmup_s=settings.warmup_s,
        seed=settings.seed + 1,  # not the measured trace
    )
    result = run(config, isolate=True)
    # A model that answered nothing gets o = its SLO: no time is left to wait for a batch.
    p99 = {
        m: (s.p99_ms if math.isfinite(s.p99_ms) else prepared.slos_ms[m] + 2 * max(prepared.profiles[m].values()))
        for m, s in result.per_model.items()
    }
    overheads = rules.overheads_from_p99(p99, prepared.profiles)
    rates = dict(prepared.scenario.weights)
    plans = rules.ray_plan(prepared.profiles, prepared.slos_ms, rates, cores=CORES, overhead_ms=overheads)
    _write_plan(plan_path, plans, generation=1)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 300
    while "ray peer ready, generation 1" not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise RuntimeError(f"Ray did not apply the calibrated plan; see {log_path}")
        time.sleep(0.5)
    print(
        "  ray      o per model (p99 − ℓ(1) at "
        f"{rules.CALIBRATION_RATE_PER_S:g} req/s each, no waits): "
        + ", ".join(f"{m} {o:.1f} ms" for m, o in overheads.items()),
        file=sys.stderr,
    )
    return {
        "deployments": [p.to_dict() for p in plans],
        "calibration": {
            "rate_per_model_per_s": rules.CALIBRATION_RATE_PER_S,
            "p99_ms": p99,
            "p50_ms": {m: _finite(s.p50_ms) for m, s in result.per_model.items()},
            "overhead_ms": overheads,
        },
    }


# ------------------------------------------------------------------------------------ measuring


def _idle(watcher: procs.Watcher, seconds: float = 3.0) -> dict[str, Any]:
    """The server's CPU and memory with no load (Ray's control loops, health checks, metrics)."""
    time.sleep(1.0)
    start = time.monotonic()
    time.sleep(seconds)
    watcher.sample()
    return watcher.window(start, time.monotonic())


def _usage(watcher: procs.Watcher, result: RunResult, end_s: float) -> dict[str, Any]:
    window = watcher.window(end_s - result.generator.wall_s, end_s)
    return {**window, "generator_cpu_cores": result.generator.cpu_share}


def _run_summary(result: RunResult) -> dict[str, Any]:
    return {
        "per_model": {
            m: {
                "offered_per_s": s.offered_rate_per_s,
                "met_fraction": s.met_fraction,
                "p50_ms": _finite(s.p50_ms),
                "p90_ms": _finite(s.p90_ms),
                "p99_ms": _finite(s.p99_ms),
                "goodput_per_s": s.goodput_per_s,
                "late": s.late,
                "dropped": s.dropped,
                "errors": s.errors,
            }
            for m, s in result.per_model.items()
        },
        "overall": {
            "offered_per_s": result.overall.offered_rate_per_s,
            "goodput_per_s": result.overall.goodput_per_s,
            "p50_ms": _finite(result.overall.p50_ms),
            "p99_ms": _finite(result.overall.p99_ms),
            "bad_rate": result.overall.bad_rate,
            "send_lag_p99_ms": _finite(result.overall.send_lag_p99_ms),
        },
        "warnings": warnings(result),
        "errors": {str(k): v for k, v in result.error_messages.items()},
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def measure_search(system: str, prepared: Prepared, settings: Settings, log_dir: Path) -> dict[str, Any]:
    """Goodput at the SLO for one system on one scenario, with its resource use."""
    with serving(system, prepared, settings, log_dir) as server:
        watcher = procs.Watcher(server.root_pid, server.also_pids).start()
        try:
            idle = _idle(watcher)
            usage_by_step: list[dict[str, Any]] = []

            def on_step(step: SearchStep) -> None:
                usage_by_step.append(_usage(watcher, step.result, time.monotonic()))
                print(f"  {system:8s} {render_step(step)}", file=sys.stderr, flush=True)

            start = settings.search.start_rate_per_s or 0.5 * prepared.limit_per_s
            config = prepared.config(server.url, start, settings, settings.duration_s)
            found = search(
                config, dataclasses.replace(settings.search, start_rate_per_s=start), isolate=True, on_step=on_step
            )
        finally:
            watcher.stop()
    best_index = max((i for i, s in enumerate(found.steps) if s.phase == "confirm"), default=None)
    best = found.best
    return {
        "system": system,
        "server": server.description,
        "goodput_per_s": found.rate_per_s,
        "confirmed": found.confirmed,
        "best": _run_summary(best) if best is not None else None,
        "usage": usage_by_step[best_index] if best_index is not None else None,
        "idle": idle,
        "steps": [{**step.to_dict(), "usage": usage} for step, usage in zip(found.steps, usage_by_step, strict=True)],
    }


def measure_fixed(
    system: str, prepared: Prepared, settings: Settings, total_rate_per_s: float, log_dir: Path
) -> dict[str, Any]:
    with serving(system, prepared, settings, log_dir) as server:
        watcher = procs.Watcher(server.root_pid, server.also_pids).start()
        try:
            idle = _idle(watcher)
            config = prepared.config(server.url, total_rate_per_s, settings, settings.fixed_duration_s)
            result = run(config, isolate=True)
            usage = _usage(watcher, result, time.monotonic())
        finally:
            watcher.stop()
    return {
        "system": system,
        "server": server.description,
        "run": _run_summary(result),
        "usage": usage,
        "idle": idle,
    }


# ------------------------------------------------------------------------------------- reporting


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or not math.isfinite(ours) or not math.isfinite(theirs):
        return "-"
    if theirs == 0:
        return "inf" if ours > 0 else "-"
    return f"{ours / theirs:.2f}"


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_search_part(prepared: Prepared, results: dict[str, dict[str, Any]]) -> str:
    scenario = prepared.scenario
    mix = ", ".join(f"{m} {prepared.slos_ms[m]:g} ms ×{w:.3f}" for m, w in scenario.weights)
    lines = [f"== {scenario.title}: {mix}", "goodput = highest total offered rate with every model ≥ 99% within SLO"]
    ours = results.get("squishy", {}).get("goodput_per_s")
    columns = ["system", "goodput r/s", "squishy/x", "confirmed", "p99 ms", "server CPU", "RSS MB", "PSS MB"]
    rows = [[*columns, "procs", "gen CPU", "idle CPU", "idle PSS MB"]]
    for system, r in results.items():
        usage = r.get("usage") or {}
        best = r.get("best") or {}
        rows.append(
            [
                system,
                _num(r["goodput_per_s"]),
                _ratio(ours, r["goodput_per_s"]),
                "yes" if r["confirmed"] else "NO",
                _num((best.get("overall") or {}).get("p99_ms")),
                _num(usage.get("cpu_cores"), ".2f"),
                _num(usage.get("rss_mb"), ".0f"),
                _num(usage.get("pss_mb"), ".0f"),
                _num(usage.get("processes"), "d"),
                _num(usage.get("generator_cpu_cores"), ".2f"),
                _num(r["idle"].get("cpu_cores"), ".2f"),
                _num(r["idle"].get("pss_mb"), ".0f"),
            ]
        )
    lines.append(_table(rows))
    lines.append(
        f"compute-only limit of the 2 cores (largest b with 2ℓ(b) ≤ SLO, no request handling): "
        f"{prepared.limit_per_s:.1f} req/s"
    )
    lines.append("CPU in cores (CPU-seconds per second, 2 = the whole machine) over the confirming run;")
    lines.append("memory peaks while loaded, summed over the server's processes (RSS counts shared pages per process).")
    for system, r in results.items():
        for warning in (r.get("best") or {}).get("warnings", []):
            lines.append(f"{system}: {warning}")
        if r["goodput_per_s"] == 0 and r["steps"]:
            # Say which model kept the system from passing even at the lowest rate tried.
            lowest = min(r["steps"], key=lambda step: step["rate_per_s"])
            met = ", ".join(f"{m} {100 * f:.1f}%" for m, f in lowest["met_fraction"].items())
            lines.append(f"{system}: no rate passed; at {lowest['rate_per_s']:.1f} req/s within SLO: {met}")
    return "\n".join(lines)


def render_fixed_part(prepared: Prepared, rate: float, results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"== (c) fixed load: the mix at {rate:.1f} req/s total; latency per model (ms), squishy/x < 1: squishy faster"
    ]
    systems = list(results)
    header = ["model", "SLO"]
    for s in systems:
        header += [f"{s} p50", "p99", "met"]
    for s in systems:
        if s != "squishy" and "squishy" in results:
            header += [f"p50 sq/{s}", f"p99 sq/{s}"]
    rows = [header]
    for model in [*prepared.scenario.models, "overall"]:
        row = [model, _num(prepared.slos_ms.get(model), "g") if model != "overall" else "-"]
        figures = {}
        for s in systems:
            run_summary = results[s]["run"]
            f = run_summary["overall"] if model == "overall" else run_summary["per_model"][model]
            figures[s] = f
            met = f.get("met_fraction")
            row += [_num(f["p50_ms"]), _num(f["p99_ms"]), "-" if met is None else f"{100 * met:.1f}%"]
        for s in systems:
            if s != "squishy" and "squishy" in results:
                row += [
                    _ratio(figures["squishy"]["p50_ms"], figures[s]["p50_ms"]),
                    _ratio(figures["squishy"]["p99_ms"], figures[s]["p99_ms"]),
                ]
        rows.append(row)
    lines.append(_table(rows))
    columns = ["system", "server CPU", "squishy/x", "RSS MB", "squishy/x", "PSS MB", "squishy/x", "procs"]
    rows = [[*columns, "gen CPU", "idle CPU"]]
    ours = results.get("squishy", {}).get("usage", {})
    for s, r in results.items():
        u = r["usage"]
        rows.append(
            [
                s,
                _num(u.get("cpu_cores"), ".2f"),
                _ratio(ours.get("cpu_cores"), u.get("cpu_cores")),
                _num(u.get("rss_mb"), ".0f"),
                _ratio(ours.get("rss_mb"), u.get("rss_mb")),
                _num(u.get("pss_mb"), ".0f"),
                _ratio(ours.get("pss_mb"), u.get("pss_mb")),
                _num(u.get("processes"), "d"),
                _num(u.get("generator_cpu_cores"), ".2f"),
                _num(r["idle"].get("cpu_cores"), ".2f"),
            ]
        )
    lines.append("")
    lines.append(_table(rows))
    for system, r in results.items():
        floors = r["server"].get("actor_call_floor_ms")
        if not floors:
            continue
        lines.append("")
        lines.append(f"{system}: p50 added over squishy on this machine vs a bare Ray actor call (batch-1 input), ms")
        rows = [["model", "added p50", "actor call p50", "added − call"]]
        for model in prepared.scenario.models:
            ours = results.get("squishy", {}).get("run", {}).get("per_model", {}).get(model, {}).get("p50_ms")
            theirs = r["run"]["per_model"][model]["p50_ms"]
            added = None if ours is None or theirs is None else theirs - ours
            floor = floors.get(model)
            beyond = None if added is None or floor is None else added - floor
            rows.append([model, _num(added, ".2f"), _num(floor, ".2f"), _num(beyond, ".2f")])
        lines.append(_table(rows))
    for system, r in results.items():
        for warning in r["run"].get("warnings", []):
            lines.append(f"{system}: {warning}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def _versions() -> dict[str, str]:
    found = {}
    for name in ("ray", "fastapi", "uvicorn", "onnxruntime", "starlette"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _each(systems: Sequence[str], action: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run ``action`` for every system; a system that cannot run here is reported, not fatal."""
    results = {}
    for system in systems:
        try:
            results[system] = action(system)
        except Exception as exc:
            print(f"  {system}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            results[system] = {"system": system, "failed": f"{type(exc).__name__}: {exc}"}
    return results


def _overhead(text: str) -> float | None:
    return None if text == "measure" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated, from squishy,ray,fastapi,squishy-ray"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from single,mix,fixed")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per search step")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each step")
    parser.add_argument("--quick", action="store_true", help="short smoke run (2 s steps, coarse search)")
    parser.add_argument(
        "--fixed-rate", type=float, help="total req/s of part (c); default: half the lowest mix goodput"
    )
    parser.add_argument(
        "--ray-overhead-ms",
        type=_overhead,
        default=None,
        help="o in Ray's batch rule, in ms (default: measured; 0: the bare 2ℓ(b) ≤ SLO rule)",
    )
    parser.add_argument("--fastapi-processes", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--mix-models",
        default=",".join(MIX_MODELS),
        help="models of part (b) in popularity order (Zipf rates); SLOs are the example configs'",
    )
    parser.add_argument("--workdir", type=Path, help="where the repositories and logs go (default: a fresh temp dir)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if bad := [s for s in systems if s not in SYSTEMS] + [p for p in parts if p not in PARTS]:
        parser.error(f"unknown system or part: {', '.join(bad)}")
    if args.quick:
        search_settings = SearchSettings(tolerance=0.25, max_steps=6, confirm_attempts=1, cooldown_s=1.0)
        settings = Settings(2.0, 1.0, search_settings, 3.0, args.ray_overhead_ms, args.fastapi_processes, args.seed)
    else:
        search_settings = SearchSettings(tolerance=0.05, max_steps=14, confirm_attempts=2, cooldown_s=3.0)
        settings = Settings(
            args.duration,
            args.warmup,
            search_settings,
            args.duration,
            args.ray_overhead_ms,
            args.fastapi_processes,
            args.seed,
        )

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-")))
        log_dir = workdir / "logs"
        report: dict[str, Any] = {
            "environment": {**environment(), "versions": _versions()},
            "settings": {
                "systems": systems,
                "parts": parts,
                "duration_s": settings.duration_s,
                "warmup_s": settings.warmup_s,
                "search": dataclasses.asdict(settings.search),
                "seed": settings.seed,
                "cores": CORES,
                "ray_overhead_ms": "measured" if settings.ray_overhead_ms is None else settings.ray_overhead_ms,
                "fastapi_processes": settings.fastapi_processes,
                "quick": args.quick,
                "mix_models": args.mix_models.split(","),
            },
        }
        texts = []
        mix_prepared = None
        mix = zipf_mix(args.mix_models.split(","))
        for scenario in (SINGLE, mix):
            if scenario.name not in parts and not (scenario is mix and "fixed" in parts):
                continue
            print(f"preparing {scenario.name}: building models and measuring profiles", file=sys.stderr)
            prepared = prepare(scenario, workdir)
            if scenario is mix:
                mix_prepared = prepared
            section: dict[str, Any] = {
                "models": {m: {"weight": w, "slo_ms": prepared.slos_ms[m]} for m, w in scenario.weights},
                "profiles_ms": {m: {str(b): v for b, v in t.items()} for m, t in prepared.profiles.items()},
                "measured_profiles_ms": {
                    m: {str(b): v for b, v in t.items()} for m, t in prepared.raw_profiles.items()
                },
                "compute_limit_per_s": prepared.limit_per_s,
            }
            report[scenario.name] = section
            if scenario.name not in parts:
                continue
            print(f"== {scenario.title}", file=sys.stderr)
            results = _each(systems, lambda s, p=prepared: measure_search(s, p, settings, log_dir))
            section["systems"] = results
            ok = {s: r for s, r in results.items() if "failed" not in r}
            text = render_search_part(prepared, ok) if ok else f"== {scenario.title}: no system ran"
            text += "".join(f"\n{s}: FAILED ({r['failed']})" for s, r in results.items() if "failed" in r)
            texts.append(text)
            print("\n" + text + "\n", flush=True)

        if "fixed" in parts and mix_prepared is not None:
            rate = args.fixed_rate
            note = ""
            goodputs = [
                r["goodput_per_s"] for r in report.get("mix", {}).get("systems", {}).values() if "failed" not in r
            ]
            if rate is None:
                positive = [g for g in goodputs if g > 0]
                # Half the weakest system's goodput: a load every system carries with room to spare.
                rate = 0.5 * min(positive) if positive else 0.1 * mix_prepared.limit_per_s
                if len(positive) < len(goodputs) or not goodputs:
                    # Some system met the SLOs at no rate (or part (b) did not run): compare latency
                    # floors at the light load used for warming up and calibrating instead.
                    rate = min(rate, rules.CALIBRATION_RATE_PER_S * len(mix_prepared.scenario.models))
                    note = (
                        "note: not every system carried some rate of the mix within its SLOs, so (c) runs at a"
                        f" light load ({rules.CALIBRATION_RATE_PER_S:g} req/s per model); --fixed-rate chooses another"
                    )
            print(f"== (c) fixed load {rate:.1f} req/s", file=sys.stderr)
            results = _each(systems, lambda s: measure_fixed(s, mix_prepared, settings, rate, log_dir))
            report["fixed"] = {"total_rate_per_s": rate, "note": note, "systems": results}
            ok = {s: r for s, r in results.items() if "failed" not in r}
            text = render_fixed_part(mix_prepared, rate, ok) if ok else "== (c): no system ran"
            text += f"\n{note}" if note else ""
            text += "".join(f"\n{s}: FAILED ({r['failed']})" for s, r in results.items() if "failed" in r)
            texts.append(text)
            print("\n" + text + "\n", flush=True)

        # Again at the end, together: the progress lines on stderr interleave with the tables above.
        print("\n==== summary\n\n" + "\n\n".join(texts))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=float))
            print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Model variants: the planner against the exact optimum, and real serving beyond the accurate variant's capacity.

    .venv/bin/python benchmarks/bench_variants.py --part optimum
    .venv/bin/python benchmarks/bench_variants.py --part serve [--factors 0.5,1,1.5,2] [--duration 20]
    .venv/bin/python benchmarks/bench_variants.py --part coldstart --rate 600 --duration 8
    .venv/bin/python benchmarks/bench_variants.py --part sim [--factors 0.5,1,1.5,2,2.5] [--duration 60]

``optimum``: the 100 seeded random instances of the tests (up to 6 tasks, 4 variants each), the policy
with one variant per task against the exact best such choice (every combination packed), the policy with
splits against the LP bound, and the best fixed rung (INFaaS's baseline).

``coldstart``: a flood at ``--rate`` on a fresh server, no warm-up: per second, the share within SLO.

``sim``: the same comparison in the simulator, which runs the server's own chooser, routing and backend
turn (``squishy.control.variants``, ``squishy.routing.TaskRoute``, ``squishy.batching.turn``), on two
ladders: the digits-in-clutter ladder with the profiles measured here, on one slot of one machine (ℓ(b)
as profiled: the slot's slowdown while serving is not modelled), and a published GPU ladder (ResNet-50,
ResNeXt-101 32x4d, SE-ResNeXt-101 32x4d; V100 16 GB, mixed precision, latencies and ImageNet top-1 from
NVIDIA's DeepLearningExamples) on a cluster of 8 GPUs. Poisson arrivals, ``--seeds`` seeds per point; a
simulated request counts its variant's accuracy if it is answered within its deadline.

``serve``: the digits-in-clutter ladder (``python -m squishy.variants.ladder examples/ladder``; built
here if missing, needs torch) served by ``squishy serve`` with one execution slot of one thread, so the
second core runs the frontend and the load generator. Offered load is a multiple of the most accurate
variant's capacity *while serving*: the slot runs it slower than the profiler measured it alone (it
shares the machine with request handling), so the capacity is 1 / (its mean batch time per request),
read from the server's own counters after 20 s at its profiled capacity. Systems, each a fresh server:

- ``squishy``: clients call the task ``clutter-digits``; squishy chooses and splits variants;
- ``fixed <variant>``: clients call one variant directly (squishy's batching and early drop, no choice):
  the most accurate one for reference, and each cheaper one, so the best fixed variant that fits (the
  most accurate whose requests stay ≥ 99% within SLO) is read off the same run.

The client (grpcio, one channel, requests serialized before the run) sends the ladder's test images in a fixed order at
Poisson times, open loop, and checks each returned label against the truth. A request counts as correct
only if it came back within the SLO by the client's clock with the right label: the delivered accuracy is
correct / sent. The 95% interval of squishy's advantage over a fixed variant is a paired bootstrap over
the test set's base digits (request i carries the same image in every run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path("results/variants")
LADDER = Path("examples/ladder")
PLOT = Path("docs/img/variants-accuracy-vs-load.png")
SIM_PLOT = Path("docs/img/variants-sim-accuracy-vs-load.png")
SEED = 11
WARMUP_S = 20.0  # load before measuring: the control loop sees the rate and the slots' slowdown, and re-plans


# ------------------------------------------------------------------------------------------ optimum
def optimum() -> dict:
    from squishy.scheduler.instances import VARIANT_COUNT, VARIANT_SEED, random_variant_instance
    from squishy.scheduler.variants import best_fixed_variant, choose_variants
    from squishy.scheduler.variants_optimum import best_choice, occupancy_bound

    rng = random.Random(VARIANT_SEED)
    gaps, split_gain, split_to_bound, fixed_gap, exact_hits = [], [], [], [], 0
    started = time.perf_counter()
    for _ in range(VARIANT_COUNT):
        tasks, profiles, budget = random_variant_instance(rng)
        whole = choose_variants(tasks, profiles, budget, split=False)
        split = choose_variants(tasks, profiles, budget)
        exact = best_choice(tasks, profiles, budget)
        relaxed = occupancy_bound(tasks, profiles, budget, split=True)
        fixed = best_fixed_variant(tasks, profiles, budget)
        assert exact is not None and relaxed is not None
        gap = exact[0] - whole.delivered_accuracy
        gaps.append(gap)
        exact_hits += gap < 1e-9
        split_gain.append(split.delivered_accuracy - whole.delivered_accuracy)
        split_to_bound.append(relaxed - split.delivered_accuracy)
        if fixed is not None:
            fixed_gap.append(split.delivered_accuracy - fixed.delivered_accuracy)
    figures = {
        "instances": VARIANT_COUNT,
        "seed": VARIANT_SEED,
        "worst_gap_pp": 100 * max(gaps),
        "mean_gap_pp": 100 * float(np.mean(gaps)),
        "exact": exact_hits,
        "split_gain_mean_pp": 100 * float(np.mean(split_gain)),
        "split_gain_max_pp": 100 * max(split_gain),
        "split_below_lp_bound_mean_pp": 100 * float(np.mean(split_to_bound)),
        "over_best_fixed_mean_pp": 100 * float(np.mean(fixed_gap)),
        "over_best_fixed_min_pp": 100 * min(fixed_gap),
        "seconds": time.perf_counter() - started,
    }
    print(
        f"one variant per task vs the exact best choice, {VARIANT_COUNT} instances: worst gap "
        f"{figures['worst_gap_pp']:.2f} pp, mean {figures['mean_gap_pp']:.3f} pp, exact on {exact_hits}\n"
        f"splitting a task's rate adds {figures['split_gain_mean_pp']:.2f} pp on average (max "
        f"{figures['split_gain_max_pp']:.2f}); it stays {figures['split_below_lp_bound_mean_pp']:.2f} pp below the "
        f"LP bound on average\nover the best fixed rung: +{figures['over_best_fixed_mean_pp']:.2f} pp on average, "
        f"min +{figures['over_best_fixed_min_pp']:.2f} pp ({figures['seconds']:.0f} s)"
    )
    return figures


# ------------------------------------------------------------------------------------------- serving
@dataclass
class RunResult:
    system: str
    model: str
    factor: float
    offered_rps: float
    sent: int
    ok_within_slo: int
    correct_within_slo: int
    rejected: int
    late: int
    errors: int
    p99_ms: float
    within_slo: float  # ok within SLO / sent
    delivered_accuracy: float  # correct within SLO / sent
    variants: dict[str, int]
    server_cpu_s: float
    duration_s: float


def capacity_rps(root: Path) -> tuple[float, str, list[tuple[str, float, float]]]:
    """The planner's capacity for the most accurate variant alone on one slot of one thread, and the
    ladder as the planner sees it (model, accuracy, ms per request at its saturating batch)."""
    from squishy.runtime.repository import ModelRepository, variant_names
    from squishy.runtime.tasks import variant_accuracy
    from squishy.scheduler import Settings
    from squishy.scheduler.variants import Task, Variant, request_cost_ms

    repository = ModelRepository(root)
    repository.load_all()
    task_spec = repository.spec("clutter-digits")
    ladder = []
    for name in variant_names(task_spec):
        spec = repository.spec(name)
        profile = repository.profile(spec, 1, concurrency=1)
        accuracy = variant_accuracy(spec) or 0.0
        task = Task("t", task_spec.slo_ms, 1.0, (Variant(name, accuracy),))
        cost = request_cost_ms(task, task.variants[0], {name: profile}, Settings())
        assert cost is not None
        ladder.append((name, accuracy, cost))
    top = max(ladder, key=lambda rung: rung[1])
    return 1000.0 / top[2], top[0], ladder


def system_repository(root: Path, name: str, models: list[str]) -> Path:
    """A repository holding only ``models``, copied with their times (squishy serves no links out of its
    repository), so the profiles cached beside the ladder's models stay valid."""
    out = RESULTS / "repos" / name
    if out.exists():
        shutil.rmtree(out)
    for model in models:
        shutil.copytree(root / model, out / model, copy_function=shutil.copy2)
    return out


async def drive(
    grpc_url: str, model: str, images: np.ndarray, labels: np.ndarray, rate: float, seconds: float, slo_ms: float
) -> tuple[list[tuple[int, str, float, bool, str]], float]:
    """Open-loop Poisson load; per request (index, status, latency ms, correct, variant).

    Requests are ``ModelInferRequest`` messages serialized before the run and sent with grpcio's raw
    unary call; replies are parsed with the generated protobuf class. A Python client that builds each
    request through ``tritonclient``'s wrappers spends more CPU per request than the server does, and on
    two cores that CPU comes out of the server's share."""
    import grpc
    from tritonclient.grpc import service_pb2

    payloads = []
    for image in images:
        message = service_pb2.ModelInferRequest(model_name=model)
        message.inputs.add(name="image", datatype="FP32", shape=[1, *image.shape])
        message.outputs.add(name="label")
        message.raw_input_contents.append(np.ascontiguousarray(image, np.float32).tobytes())
        payloads.append(message.SerializeToString())
    channel = grpc.aio.insecure_channel(grpc_url)
    await channel.channel_ready()
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    rng = np.random.default_rng(SEED)
    count = int(rate * seconds)
    gaps = rng.exponential(1.0 / rate, size=count)
    records: list[tuple[int, str, float, bool, str]] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int) -> None:
        sent = time.perf_counter()
        try:
            reply = await call(payloads[index % len(payloads)], timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            status = "rejected" if exc.code() == grpc.StatusCode.UNAVAILABLE else "error"
            records.append((index, status, (time.perf_counter() - sent) * 1000, False, ""))
            return
        latency_ms = (time.perf_counter() - sent) * 1000
        response = service_pb2.ModelInferResponse.FromString(reply)
        label = int(np.frombuffer(response.raw_output_contents[0], np.int64)[0])
        answered_by = response.parameters.get("squishy_variant")
        variant = answered_by.string_param if answered_by is not None else model
        status = "ok" if latency_ms <= slo_ms else "late"
        records.append((index, status, latency_ms, label == int(labels[index % len(labels)]), variant))

    start = time.perf_counter()
    due = start
    for index in range(count):
        due += gaps[index]
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(index))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    elapsed = time.perf_counter() - start
    await channel.close()
    return records, elapsed


def serve_run(
    system: str, model: str, repo: Path, factor: float, rate: float, duration: float, data: Any
) -> tuple[RunResult, np.ndarray]:
    from squishy.bench.launch import start_squishy

    slo_ms = 100.0
    with start_squishy(repo, ["--slots", "1", "--threads-per-slot", "1", "--log-level", "warning"]) as server:
        asyncio.run(drive(server.grpc_url, model, data.test_x, data.test_y, rate, WARMUP_S, slo_ms))
        cpu_before = server.cpu_s()
        records, elapsed = asyncio.run(drive(server.grpc_url, model, data.test_x, data.test_y, rate, duration, slo_ms))
        cpu = server.cpu_s() - cpu_before
        alive = server.alive()
    if not alive:
        raise RuntimeError(f"{system}: the server died")
    statuses = [r[1] for r in records]
    ok = [r for r in records if r[1] == "ok"]
    correct = np.zeros(len(records), bool)
    for index, status, _, right, _ in records:
        correct[index] = status == "ok" and right
    latencies = [r[2] for r in records if r[1] in ("ok", "late")]
    variants: dict[str, int] = {}
    for r in ok:
        variants[r[4]] = variants.get(r[4], 0) + 1
    result = RunResult(
        system=system,
        model=model,
        factor=factor,
        offered_rps=rate,
        sent=len(records),
        ok_within_slo=len(ok),
        correct_within_slo=int(correct.sum()),
        rejected=statuses.count("rejected"),
        late=statuses.count("late"),
        errors=statuses.count("error"),
        p99_ms=float(np.percentile(latencies, 99)) if latencies else float("nan"),
        within_slo=len(ok) / max(len(records), 1),
        delivered_accuracy=float(correct.mean()) if len(records) else 0.0,
        variants=variants,
        server_cpu_s=cpu,
        duration_s=elapsed,
    )
    print(
        f"  {system:<22} {factor:>4.2f}x {rate:>6.0f} req/s: within SLO {result.within_slo:6.1%}  delivered "
        f"accuracy {result.delivered_accuracy:.4f}  rejected {result.rejected}  late {result.late}  errors "
        f"{result.errors}  p99 {result.p99_ms:5.1f} ms  {variants}",
        flush=True,
    )
    return result, correct


def paired_interval(
    a: np.ndarray, b: np.ndarray, base: np.ndarray, resamples: int = 2000
) -> tuple[float, float, float]:
    """Mean of a - b over requests and its 95% interval, bootstrapping over base digits (request i carries
    test image i mod n, whose base digit is base[i mod n])."""
    n = min(len(a), len(b))
    groups = base[np.arange(n) % len(base)]
    labels, index = np.unique(groups, return_inverse=True)
    difference = np.bincount(index, weights=(a[:n].astype(float) - b[:n].astype(float)), minlength=len(labels))
    sizes = np.bincount(index, minlength=len(labels)).astype(float)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    estimates = difference[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    low, high = np.quantile(estimates, [0.025, 0.975])
    return float(difference.sum() / sizes.sum()), float(low), float(high)


def serving_capacity(top: str, profiled_rps: float, data: Any) -> float:
    """Requests/s the slot really sustains on ``top`` alone: 1 / its batch time per request while serving."""
    from squishy.bench.launch import start_squishy

    repo = system_repository(LADDER, f"fixed-{top}", [top])
    with start_squishy(repo, ["--slots", "1", "--threads-per-slot", "1", "--log-level", "warning"]) as server:
        asyncio.run(drive(server.grpc_url, top, data.test_x, data.test_y, profiled_rps, WARMUP_S, 100.0))
        metrics = server.metrics()
    values = {}
    for line in metrics.splitlines():
        for name in ("nv_inference_count", "nv_inference_compute_infer_duration_us"):
            if line.startswith(name + "{") and f'model="{top}"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    per_request_ms = values["nv_inference_compute_infer_duration_us"] / 1000.0 / values["nv_inference_count"]
    return 1000.0 / per_request_ms


def floor_repository(names: list[str], floor: float) -> Path:
    """The squishy repository with the task's accuracy_floor set to ``floor``."""
    repo = system_repository(LADDER, f"squishy-floor-{floor:g}", ["clutter-digits", *names])
    config = repo / "clutter-digits" / "config.pbtxt"
    text = config.read_text()
    marker = 'key: "accuracy_floor" value { string_value: "'
    start = text.index(marker) + len(marker)
    config.write_text(text[:start] + f"{floor:g}" + text[text.index('"', start) :])
    return repo


def serve(factors: list[float], duration: float, fixed: list[str] | None, floor: float | None = None) -> dict:
    from squishy.variants.ladder import build_ladder, digits_in_clutter

    build_ladder(LADDER, progress=lambda line: print(line, flush=True))
    summary = json.loads((LADDER / "ladder.json").read_text())
    data = digits_in_clutter(summary["seed"])
    profiled, top, ladder = capacity_rps(LADDER)
    print("the ladder as profiled (one slot, one thread, idle machine):")
    for name, accuracy, cost in ladder:
        print(f"  {name:<16} accuracy {accuracy:.4f}  {cost:.3f} ms per request")
    capacity = serving_capacity(top, profiled, data)
    print(f"capacity of {top} alone: {profiled:.0f} req/s as profiled, {capacity:.0f} req/s while serving")
    names = [name for name, _, _ in ladder]
    # Default: every rung but the cheapest, which fits any load here; ["none"]: squishy alone.
    fixed_models = [] if fixed == ["none"] else fixed or [n for n in names if n != names[0]]
    runs: list[RunResult] = []
    correct: dict[tuple[str, float], np.ndarray] = {}
    squishy_repo = system_repository(LADDER, "squishy", ["clutter-digits", *names])
    for factor in factors:
        rate = capacity * factor
        print(f"{factor:g}x the capacity of {top}: {rate:.0f} req/s", flush=True)
        result, right = serve_run("squishy", "clutter-digits", squishy_repo, factor, rate, duration, data)
        runs.append(result)
        correct[("squishy", factor)] = right
        if floor is not None:
            system = f"squishy floor {floor:g}"
            result, right = serve_run(
                system, "clutter-digits", floor_repository(names, floor), factor, rate, duration, data
            )
            runs.append(result)
            correct[(system, factor)] = right
        for model in fixed_models:
            repo = system_repository(LADDER, f"fixed-{model}", [model])
            result, right = serve_run(f"fixed {model}", model, repo, factor, rate, duration, data)
            runs.append(result)
            correct[(f"fixed {model}", factor)] = right
    comparisons = []
    for factor in factors:
        fitting = [r for r in runs if r.factor == factor and r.system.startswith("fixed") and r.within_slo >= 0.99]
        if not fitting:
            continue
        best = max(fitting, key=lambda r: r.delivered_accuracy)
        mean, low, high = paired_interval(correct[("squishy", factor)], correct[(best.system, factor)], data.test_base)
        comparisons.append({"factor": factor, "best_fixed": best.system, "advantage": mean, "ci95": [low, high]})
        print(
            f"{factor:g}x: squishy over the best fixed variant that fits ({best.system}): {100 * mean:+.2f} pp "
            f"(95% CI {100 * low:+.2f} to {100 * high:+.2f})"
        )
    return {
        "profiled_capacity_rps": profiled,
        "capacity_rps": capacity,
        "most_accurate": top,
        "ladder": ladder,
        "duration_s": duration,
        "runs": [asdict(r) for r in runs],
        "comparisons": comparisons,
    }


def cold_start(rate: float, seconds: float) -> dict:
    """A flood on a fresh server: per second, the share of requests within SLO and who answered."""
    from squishy.bench.launch import start_squishy
    from squishy.variants.ladder import build_ladder, digits_in_clutter

    build_ladder(LADDER, progress=lambda line: print(line, flush=True))
    data = digits_in_clutter(json.loads((LADDER / "ladder.json").read_text())["seed"])
    names = [n for n in json.loads((LADDER / "ladder.json").read_text())["rungs"] if n["kept"]]
    repo = system_repository(LADDER, "squishy", ["clutter-digits", *(n["model"] for n in names)])
    with start_squishy(repo, ["--slots", "1", "--threads-per-slot", "1", "--log-level", "warning"]) as server:
        records, _ = asyncio.run(
            drive(server.grpc_url, "clutter-digits", data.test_x, data.test_y, rate, seconds, 100.0)
        )
    per_second = []
    for second in range(int(seconds)):
        here = [r for r in records if int(r[0] / rate) == second]
        ok = [r for r in here if r[1] == "ok"]
        answered: dict[str, int] = {}
        for r in ok:
            answered[r[4]] = answered.get(r[4], 0) + 1
        per_second.append(
            {"second": second, "sent": len(here), "within_slo": len(ok) / max(len(here), 1), "answered": answered}
        )
        print(f"  second {second}: {len(ok) / max(len(here), 1):6.1%} within SLO  {answered}")
    return {"rate": rate, "seconds": seconds, "per_second": per_second}


# The published ladder: V100 16 GB mixed-precision inference latency tables (squishy's reference profiles,
# src/squishy/data/profiles/gpu) and the AMP top-1 accuracy on ImageNet of the same three models, from
# NVIDIA/DeepLearningExamples TensorFlow/Classification/ConvNets/README.md ("Validation accuracy results",
# tensorflow-20.03-tf1-py3 container): ResNet-50 v1.5 78.35, ResNeXt-101 32x4d 80.21, SE-ResNeXt-101 32x4d 80.87.
GPU_LADDER = (("resnet50", 0.7835), ("resnext101-32x4d", 0.8021), ("se-resnext101-32x4d", 0.8087))
GPU_DEVICE, GPU_PRECISION, GPU_BACKENDS = "v100-16gb", "fp16", 8
SIM_SLO_MS = 100.0
SIM_WARMUP_S = 15.0  # the first plan is made from nothing, as the server's is: measure after it settled


def capacity_of(model: str, profiles: dict, backends: int, settings: Any) -> float:
    """The highest rate (requests/s) one session of ``model`` may have and still fit ``backends``."""
    from squishy.scheduler.variants import Task, Variant, most_accurate_needs

    low, high = 1.0, 1e6
    for _ in range(50):
        middle = (low * high) ** 0.5
        task = Task("t", SIM_SLO_MS, middle, (Variant(model, 1.0),))
        if most_accurate_needs([task], profiles, settings=settings) <= backends:
            low = middle
        else:
            high = middle
    return low


def sim_run(ladder: list[tuple[str, float]], profiles: dict, system: str, rate: float, setup: dict, seed: int) -> dict:
    """One simulated run: ``system`` is "squishy" (the task, variants chosen) or "fixed <model>"."""
    from squishy.runtime.core import ServingConfig
    from squishy.scheduler import Session, Workload
    from squishy.scheduler.variants import Task, Variant
    from squishy.sim.simulation import SimConfig, Simulation

    serving = ServingConfig()
    config = SimConfig(
        duration_s=setup["duration_s"] + SIM_WARMUP_S,
        warmup_s=SIM_WARMUP_S,
        seed=seed,
        control=serving.control(),
        capacity=setup["backends"],
        machine=setup["machine"],
        variant_load_margin=setup["margin"],
    )
    accuracy = dict(ladder)
    if system == "squishy":
        task = Task("task", SIM_SLO_MS, rate, tuple(Variant(m, a) for m, a in ladder))
        workload = Workload(settings=serving.settings)
        result = Simulation(workload, profiles, None, "squishy", config, tasks=[task]).run()
        summary = result.summary["tasks"]["task"]
        overall = result.summary["overall"]
        return {
            "within_slo": overall["good_rate"],
            "delivered_accuracy": summary["delivered_accuracy"],
            "answered": summary["answered_in_time"],
            "fell_back": summary["fell_back"],
            "shed": summary["shed"],
            "p99_ms": overall["p99_ms"],
        }
    model = system.removeprefix("fixed ")
    workload = Workload(sessions=(Session(model, SIM_SLO_MS, rate),), settings=serving.settings)
    result = Simulation(workload, {model: profiles[model]}, None, "squishy", config).run()
    overall = result.summary["overall"]
    return {
        "within_slo": overall["good_rate"],
        "delivered_accuracy": overall["good_rate"] * accuracy[model],
        "answered": {model: overall["good"]},
        "fell_back": {},
        "shed": 0,
        "p99_ms": overall["p99_ms"],
    }


def binomial_interval(accuracy: float, count: int) -> tuple[float, float]:
    half = 1.96 * (accuracy * (1 - accuracy) / count) ** 0.5
    return (accuracy - half, accuracy + half)


def advantage_interval(
    mine: dict, best: dict, accuracy: dict[str, float], intervals: dict[str, tuple[float, float]]
) -> tuple[float, float]:
    """A conservative 95% interval of squishy's advantage over a fixed variant, from the uncertainty of the
    rungs' measured accuracies: each answered request's gain a_v - a_fixed gets the interval of a difference
    of two independent estimates (half-widths added in quadrature), weighted by the share answered by v.
    The simulated counts themselves are exact for their seed; only the accuracies are estimates."""
    fixed = best["system"].removeprefix("fixed ")
    if not intervals or fixed not in intervals:
        return (math.nan, math.nan)
    half_fixed = (intervals[fixed][1] - intervals[fixed][0]) / 2
    low = high = 0.0
    for seed_run, fixed_run in zip(mine["seeds"], best["seeds"], strict=True):
        sent = sum(seed_run["answered"].values()) / max(seed_run["within_slo"], 1e-12)
        for model, count in seed_run["answered"].items():
            if not count or model == fixed:
                continue
            share = count / sent
            half = ((intervals[model][1] - intervals[model][0]) ** 2 / 4 + half_fixed**2) ** 0.5
            gain = accuracy[model] - accuracy[fixed]
            low += share * (gain - half)
            high += share * (gain + half)
        # requests answered by the fixed variant's own model, and the difference in requests within SLO
        within = seed_run["within_slo"] - fixed_run["within_slo"]
        low += within * accuracy[fixed]
        high += within * accuracy[fixed]
    runs = len(mine["seeds"])
    return (low / runs, high / runs)


def simulate(factors: list[float], duration: float, seeds: int) -> dict:
    from squishy.control.variants import CHOICE_LOAD_MARGIN
    from squishy.profiles.io import load_profile, reference_profile
    from squishy.runtime.core import ServingConfig
    from squishy.sim.simulation import MachineSpec
    from squishy.variants.ladder import build_ladder

    build_ladder(LADDER, progress=lambda line: print(line, flush=True))
    rungs = [r for r in json.loads((LADDER / "ladder.json").read_text())["rungs"] if r["kept"]]
    setups = {
        "digits in clutter, 1 CPU slot (profiled here)": {
            "ladder": [(r["model"], r["accuracy"]) for r in rungs],
            "intervals": {r["model"]: (r["ci_low"], r["ci_high"]) for r in rungs},
            "profiles": {
                r["model"]: load_profile(LADDER / r["model"] / "1" / "cpu-1t.profile-cache.json") for r in rungs
            },
            "backends": 1,
            "machine": MachineSpec(slots=1),
            "margin": CHOICE_LOAD_MARGIN,
        },
    }
    gpu = {
        "ladder": list(GPU_LADDER),
        # ImageNet's 50,000 validation images: the binomial 95% interval of each published top-1.
        "intervals": {m: binomial_interval(a, 50_000) for m, a in GPU_LADDER},
        "profiles": {m: reference_profile(m, GPU_DEVICE, GPU_PRECISION) for m, _ in GPU_LADDER},
        "backends": GPU_BACKENDS,
        "machine": None,
        "margin": CHOICE_LOAD_MARGIN,
    }
    # The server's margin is measured on this CPU machine (a slot runs slower than profiled while serving);
    # a simulated GPU runs exactly its profile, so the ladder is also run without it.
    setups[f"ImageNet ConvNets, {GPU_BACKENDS} V100 GPUs (published), margin {CHOICE_LOAD_MARGIN:g}"] = gpu
    setups[f"ImageNet ConvNets, {GPU_BACKENDS} V100 GPUs (published), margin 1"] = {**gpu, "margin": 1.0}
    settings = ServingConfig().settings
    out = []
    for name, setup in setups.items():
        setup["duration_s"] = duration
        ladder = setup["ladder"]
        top = max(ladder, key=lambda rung: rung[1])[0]
        capacity = capacity_of(top, setup["profiles"], setup["backends"], settings)
        print(f"{name}: capacity of {top} alone {capacity:.0f} req/s", flush=True)
        systems = ["squishy", *(f"fixed {m}" for m, _ in ladder)]
        runs = []
        for factor in factors:
            for system in systems:
                seeded = [sim_run(ladder, setup["profiles"], system, capacity * factor, setup, s) for s in range(seeds)]
                run = {
                    "system": system,
                    "factor": factor,
                    "within_slo": float(np.mean([r["within_slo"] for r in seeded])),
                    "within_slo_min": float(np.min([r["within_slo"] for r in seeded])),
                    "delivered_accuracy": float(np.mean([r["delivered_accuracy"] for r in seeded])),
                    "delivered_accuracy_range": [
                        float(np.min([r["delivered_accuracy"] for r in seeded])),
                        float(np.max([r["delivered_accuracy"] for r in seeded])),
                    ],
                    "p99_ms": float(np.max([r["p99_ms"] for r in seeded])),
                    "seeds": seeded,
                }
                runs.append(run)
                print(
                    f"  {factor:g}x {system:<28} within SLO {run['within_slo']:.4f} (min {run['within_slo_min']:.4f})"
                    f"  delivered accuracy {run['delivered_accuracy']:.4f}  answered {seeded[0]['answered']}",
                    flush=True,
                )
        comparisons = []
        for factor in factors:
            here = [r for r in runs if r["factor"] == factor]
            fitting = [r for r in here if r["system"] != "squishy" and r["within_slo_min"] >= 0.99]
            mine = next(r for r in here if r["system"] == "squishy")
            if not fitting:
                continue
            best = max(fitting, key=lambda r: r["delivered_accuracy"])
            gain = mine["delivered_accuracy"] - best["delivered_accuracy"]
            low, high = advantage_interval(mine, best, dict(ladder), setup["intervals"])
            comparisons.append({"factor": factor, "best_fixed": best["system"], "advantage": gain, "ci95": [low, high]})
            print(
                f"  {factor:g}x: squishy over the best fixed variant that fits ({best['system']}): {100 * gain:+.2f} pp"
                f" (95% CI from the rungs' intervals {100 * low:+.2f} to {100 * high:+.2f})"
            )
        out.append(
            {
                "setup": name,
                "ladder": ladder,
                "intervals": setup["intervals"],
                "backends": setup["backends"],
                "most_accurate": top,
                "capacity_rps": capacity,
                "runs": runs,
                "comparisons": comparisons,
            }
        )
    return {"duration_s": duration, "seeds": seeds, "setups": out}


def plot(results: dict, out: Path) -> Path:
    """Delivered accuracy and share within SLO against offered load, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    systems = sorted({r["system"] for r in results["runs"]}, key=lambda name: (name != "squishy", name))
    for system in systems:
        runs = sorted((r for r in results["runs"] if r["system"] == system), key=lambda r: r["factor"])
        factors = [r["factor"] for r in runs]
        style = {"linewidth": 2.5} if system == "squishy" else {"linestyle": "--"}
        left.plot(factors, [r["delivered_accuracy"] for r in runs], marker="o", label=system, **style)
        right.plot(factors, [100 * r["within_slo"] for r in runs], marker="o", label=system, **style)
    top = results["most_accurate"]
    for axis in (left, right):
        axis.set_xlabel(f"offered load (× the capacity of {top} alone)")
        axis.grid(alpha=0.3)
    left.set_ylabel("delivered accuracy (correct within SLO / sent)")
    right.set_ylabel("% of requests within SLO")
    right.axhline(99, color="grey", linewidth=0.8)
    left.legend(fontsize=8)
    left.set_title("digits in clutter, one slot, real serving")
    right.set_title("INFaaS (reported): 1.3× throughput, 1.6× fewer SLO misses", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return out


def plot_sim(results: dict, out: Path) -> Path:
    """Simulated delivered accuracy against offered load: one panel per ladder, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = results["setups"]
    figure, axes = plt.subplots(1, len(setups), figsize=(5 * len(setups), 4), squeeze=False)
    for axis, setup in zip(axes[0], setups, strict=True):
        systems = sorted({r["system"] for r in setup["runs"]}, key=lambda name: (name != "squishy", name))
        for system in systems:
            runs = sorted((r for r in setup["runs"] if r["system"] == system), key=lambda r: r["factor"])
            style = {"linewidth": 2.5} if system == "squishy" else {"linestyle": "--"}
            axis.plot([r["factor"] for r in runs], [r["delivered_accuracy"] for r in runs], marker="o",
                      label=system, **style)  # fmt: skip
        accuracies = [a for _, a in setup["ladder"]]
        axis.set_ylim(min(accuracies) - 0.05, max(accuracies) + 0.01)
        axis.set_xlabel(f"offered load (× the capacity of {setup['most_accurate']} alone)")
        axis.set_title(setup["setup"], fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("delivered accuracy (expected correct within SLO / sent)")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["optimum", "serve", "plot", "coldstart", "sim"], required=True)
    parser.add_argument("--rate", type=float, default=600.0, help="with --part coldstart: requests/s")
    parser.add_argument("--input", help="with --part plot: a serve-DATE.json to plot")
    parser.add_argument("--factors", default="0.5,1,1.5,2", help="offered load, multiples of the top rung's capacity")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per run (after warm-up)")
    parser.add_argument(
        "--fixed",
        default="",
        help="fixed variants to compare (default: every rung but the cheapest; none: no fixed runs)",
    )
    parser.add_argument("--floor", type=float, help="also serve the task with this accuracy_floor")
    parser.add_argument("--seeds", type=int, default=3, help="with --part sim: seeds per point")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part == "plot":
        document = json.loads(Path(args.input).read_text())
        print(f"wrote {plot_sim(document, SIM_PLOT) if 'setups' in document else plot(document, PLOT)}")
        return
    if args.part == "optimum":
        figures = optimum()
    elif args.part == "coldstart":
        figures = cold_start(args.rate, args.duration)
    elif args.part == "sim":
        figures = simulate([float(f) for f in args.factors.split(",")], args.duration, args.seeds)
    else:
        factors = [float(f) for f in args.factors.split(",")]
        figures = serve(factors, args.duration, [m for m in args.fixed.split(",") if m] or None, args.floor)
    stamp = time.strftime("%Y-%m-%d")
    variant = "-floor" if args.floor is not None else ""  # a floor run is written beside the main one
    out = RESULTS / f"{args.part}-{stamp}{variant}.json"
    document = {"date": stamp, "command": " ".join(sys.argv), **figures}
    out.write_text(json.dumps(document, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    if args.part == "serve" and not variant:
        print(f"wrote {plot(document, PLOT)}")
    if args.part == "sim":
        print(f"wrote {plot_sim(document, SIM_PLOT)}")


if __name__ == "__main__":
    main()

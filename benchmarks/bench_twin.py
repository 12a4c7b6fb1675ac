"""The twin against the server: the simulator predicts ``squishy serve`` on this machine, then the real
server runs the same arrival traces, and both are printed side by side.

    .venv/bin/python benchmarks/bench_twin.py --part calibrate          # results/twin/calibration.json
    .venv/bin/python benchmarks/bench_twin.py --part compare [--runs 3]  # predictions vs measurements
    .venv/bin/python benchmarks/bench_twin.py --part twin   # the twin again, against compare.json's server runs
    .venv/bin/python benchmarks/bench_twin.py --part loads --workloads 1  # the server again at compare.json's loads

Calibration runs (``squishy.bench.calibrate``, ``busy=True``) measure at fixed rates the CPU per request
of the server's event loop and slot threads and of the load generator: against a ``null-zero`` server
(what the slot threads spend outside the executor), then with each model alone on ONNX Runtime at 20%
and 40% of its slots' limit (the event loop's and the generator's costs while the slots work, and the
batches' CPU against their profiled ℓ(b)). The comparison never feeds its own measurements back into
the model: the twin reads the calibration file, the profiles the server itself reads (cached beside the
models; every workload's repository gets the calibration repository's, so both read the same ℓ(b)),
the machine's cores and the server's defaults, and nothing else.

Per workload (``resnet18-half`` alone; the four-model mix of ``bench_peers.py``; a held-out mix under
gamma arrivals with CV 2 that the calibration never ran): the goodput (highest total rate with every
model ≥ 99% within its SLO) predicted by the twin, by the ideal twin (no host CPU, batches at their
profiled speed) and measured by ``--runs`` real searches (median and spread); then, at 50%, 80% and 95%
of the measured goodput, each model's share within SLO and p50/p99 latency, predicted and measured
(median of the runs), on the same arrival trace (same seed) for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squishy.arrivals import Arrivals
from squishy.bench import BenchConfig, ModelLoad, SearchSettings, run, search
from squishy.bench.calibrate import Calibration, calibrate
from squishy.bench.launch import start_squishy
from squishy.cluster import slot_layout
from squishy.examples import build_examples
from squishy.sim.twin import Twin, mix_of, physical_limit

RESULTS = Path("results/twin")
REPOSITORY = Path("examples/repository")
CALIBRATED_MODELS = ("digits", "smallcnn", "ppocr-cls", "resnet18-half", "ppocr-det", "ppocr-rec")
LOAD_SHARES = (0.5, 0.8, 0.95)
SEED = 7


@dataclass(frozen=True)
class Workload:
    name: str
    mix: dict[str, float]
    arrivals: Arrivals
    held_out: bool = False

    @property
    def repository(self) -> Path:
        """The repository this workload is served from: its models and no others. A model the repository
        holds is planned for (at the floor rate) whether or not it gets traffic, so the server and the
        twin must both see exactly the workload's models."""
        slug = "-".join(sorted(self.mix))
        return RESULTS / "repositories" / slug


WORKLOADS = (
    Workload("resnet18-half alone", {"resnet18-half": 1.0}, Arrivals.poisson()),
    Workload("four-model mix", mix_of(["digits", "smallcnn", "ppocr-cls", "resnet18-half"]), Arrivals.poisson()),
    Workload(
        "held out: three-model mix, gamma CV 2",
        mix_of(["smallcnn", "resnet18-half", "digits"], [3.0, 1.0, 2.0]),
        Arrivals.gamma(2.0),
        held_out=True,
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("calibrate", "compare", "twin", "loads"), required=True)
    parser.add_argument("--runs", type=int, default=3, help="real searches per workload (median and spread)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per step (real and twin)")
    # Each real step starts a fresh server, which plans for its first measured rates 2 s in and revises
    # the plan as its rate estimate settles; the twin predicts the steady state that follows.
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds sent but not counted, per step")
    parser.add_argument("--workloads", default="all", help="comma-separated indices into the workload list, or all")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    build_examples(REPOSITORY)
    if args.part == "calibrate":
        started = time.monotonic()
        calibration = calibrate(REPOSITORY, CALIBRATED_MODELS, progress=sys.stderr.isatty(), busy=True)
        calibration.save(RESULTS / "calibration.json")
        print(f"calibration ({time.monotonic() - started:.0f} s): {RESULTS / 'calibration.json'}")
        print("CPU ms per request (event loop: request + reply; generator) at each rate; slot thread per batch:")
        for model, costs in calibration.models.items():
            for index, rate in enumerate(costs.rates_per_s):
                print(
                    f"  {model:14s} {rate:6.0f} req/s: event loop {costs.frontend_ms[index]:.3f} + "
                    f"{costs.reply_ms[index]:.3f}, generator {costs.generator_ms[index]:.3f}"
                )
            slot = f"{costs.slot_batch_ms:.3f} per batch + {costs.slot_request_ms:.3f} per request"
            print(f"  {model:14s} slot thread: {slot}; batches take {costs.execution_factor:.3f} × ℓ(b) of CPU")
        return
    calibration = Calibration.load(RESULTS / "calibration.json")
    if args.part == "twin":
        repredict(calibration, args)
        return
    if args.part == "loads":
        remeasure_loads(args)
        return
    chosen = WORKLOADS if args.workloads == "all" else [WORKLOADS[int(i)] for i in args.workloads.split(",")]
    report = {"calibration": calibration.to_dict(), "workloads": []}
    for workload in chosen:
        report["workloads"].append(compare(workload, calibration, args))
        (RESULTS / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {RESULTS / 'compare.json'}")


def remeasure_loads(args: argparse.Namespace) -> None:
    """Run the server again at the loads compare.json holds for the chosen workloads (50/80/95% of their
    measured goodput, ``--runs`` each, same seeds), replacing those loads' server runs: for a sitting in
    which other work ran while the loads were measured. The searches are kept."""
    path = RESULTS / "compare.json"
    measured = json.loads(path.read_text())
    chosen = {
        w.name
        for w in (WORKLOADS if args.workloads == "all" else [WORKLOADS[int(i)] for i in args.workloads.split(",")])
    }
    for stored in measured["workloads"]:
        if stored["workload"] not in chosen:
            continue
        workload = next(w for w in WORKLOADS if w.name == stored["workload"])
        slos = {model: stats["slo_ms"] for model, stats in stored["loads"][0]["twin"].items()}
        print(f"\n== {workload.name} (the server again at the stored loads)")
        for load in stored["loads"]:
            load["server"] = [real_run(workload, slos, load["rate_per_s"], args, SEED) for _ in range(args.runs)]
            load["server_measured"] = time.strftime("%Y-%m-%d %H:%M")
            print_load(load["share"], load["rate_per_s"], load["twin"], load["server"])
        path.write_text(json.dumps(measured, indent=2) + "\n")
    print(f"results: {path}")


def repredict(calibration: Calibration, args: argparse.Namespace) -> None:
    """The twin, from the calibration now in results/twin, against the server runs compare.json holds
    (the same workloads, loads and seeds; the server is not run again)."""
    measured = json.loads((RESULTS / "compare.json").read_text())
    report = {"calibration": calibration.to_dict(), "server_runs": str(RESULTS / "compare.json"), "workloads": []}
    for stored in measured["workloads"]:
        workload = next(w for w in WORKLOADS if w.name == stored["workload"])
        twin = Twin(workload.repository, calibration, workload.mix, slot_layout(), workload.arrivals, args.warmup,
                    args.duration)  # fmt: skip
        predicted = twin.search(start_per_s=stored["physical_limit"] * 0.7, seed=SEED)
        median = stored["server_goodput_median"]
        error = (predicted.rate - median) / median if median else float("nan")
        print(f"\n== {workload.name}")
        print(
            f"goodput: twin {predicted.rate:.1f}, ideal {stored['ideal_goodput']:.1f}, server median {median:.1f} "
            f"(runs {', '.join(f'{g:.1f}' for g in stored['server_goodput_runs'])}): twin error {100 * error:+.1f}%"
        )
        loads = []
        for load in stored["loads"]:
            twin_run = twin.predict(load["rate_per_s"], SEED)
            print_load(load["share"], load["rate_per_s"], twin_run.per_model, load["server"])
            loads.append({**load, "twin": twin_run.per_model})
        report["workloads"].append(
            {**stored, "twin_goodput": predicted.rate, "twin_curve": [t.to_dict() for t in predicted.curve],
             "twin_error": error, "loads": loads}
        )  # fmt: skip
        (RESULTS / "compare-twin.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {RESULTS / 'compare-twin.json'}")


def compare(workload: Workload, calibration: Calibration, args: argparse.Namespace) -> dict[str, Any]:
    layout = slot_layout()
    build_examples(workload.repository, only=tuple(workload.mix))
    share_profiles(REPOSITORY, workload.repository)
    twin = Twin(workload.repository, calibration, workload.mix, layout, workload.arrivals, args.warmup, args.duration)
    ideal = Twin(workload.repository, None, workload.mix, layout, workload.arrivals, args.warmup, args.duration)
    limit = physical_limit(twin)
    print(f"\n== {workload.name}: {', '.join(f'{m} ×{w:.3f}' for m, w in workload.mix.items())}")
    print(f"physical limit of the slots (profiles measured here): {limit:.1f} req/s")
    started = time.monotonic()
    predicted = twin.search(start_per_s=limit * 0.7, seed=SEED)
    ideal_found = ideal.search(start_per_s=limit * 0.7, seed=SEED)
    print(
        f"twin: goodput {predicted.rate:.1f} req/s (ideal machine: {ideal_found.rate:.1f}); "
        f"{time.monotonic() - started:.0f} s"
    )
    slos = {model: slo for model, _, slo, _ in twin.sessions}
    measured_goodput = []
    for index in range(args.runs):
        found = real_search(workload, slos, args, start=limit * 0.7, seed=SEED)
        measured_goodput.append(found.rate_per_s)
        print(f"server run {index + 1}: goodput {found.rate_per_s:.1f} req/s (confirmed: {found.confirmed})")
    median = statistics.median(measured_goodput)
    loads = []
    for share in LOAD_SHARES:
        rate = median * share
        twin_run = twin.predict(rate, SEED)
        real_runs = [real_run(workload, slos, rate, args, SEED) for _ in range(args.runs)]
        loads.append({"share": share, "rate_per_s": rate, "twin": twin_run.per_model, "server": real_runs})
        print_load(share, rate, twin_run.per_model, real_runs)
    error = (predicted.rate - median) / median if median else float("nan")
    print(
        f"goodput: twin {predicted.rate:.1f}, ideal {ideal_found.rate:.1f}, server median {median:.1f} "
        f"(runs {', '.join(f'{g:.1f}' for g in measured_goodput)}): twin error {100 * error:+.1f}%"
    )
    return {
        "workload": workload.name,
        "mix": workload.mix,
        "arrivals": workload.arrivals.describe(),
        "held_out": workload.held_out,
        "physical_limit": limit,
        "twin_goodput": predicted.rate,
        "twin_curve": [t.to_dict() for t in predicted.curve],
        "ideal_goodput": ideal_found.rate,
        "server_goodput_runs": measured_goodput,
        "server_goodput_median": median,
        "twin_error": error,
        "loads": loads,
    }


def share_profiles(source: Path, target: Path) -> None:
    """Copy the calibration repository's cached profiles into ``target``'s models: the calibration's
    execution factor is relative to that ℓ(b), and every server started on ``target`` reads it too."""
    for cached in source.glob("*/*/*.profile-cache.json"):
        destination = target / cached.relative_to(source)
        if destination.parent.is_dir():
            shutil.copy2(cached, destination)


def _config(workload: Workload, slos: dict[str, float], rate: float, args: argparse.Namespace, url: str, seed: int):
    loads = tuple(ModelLoad(m, rate * w, slos[m]) for m, w in workload.mix.items())
    return BenchConfig(
        models=loads, url=url, arrivals=workload.arrivals, duration_s=args.duration, warmup_s=args.warmup, seed=seed
    )


def real_search(workload: Workload, slos: dict[str, float], args: argparse.Namespace, start: float, seed: int) -> Any:
    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        with start_squishy(workload.repository, ["--executor", "onnxruntime"]) as server:
            yield server.http_url

    config = _config(workload, slos, start, args, "http://127.0.0.1:0", seed)
    # The twin's search: the same grid, tolerance and seeds (scan on ``seed``, confirm on ``seed + 1``), and,
    # as each of the twin's probes starts from nothing, each step on a server of its own.
    return search(config, SearchSettings(tolerance=0.02, cooldown_s=0.0), isolate=True, fresh_server=fresh_server)


def real_run(
    workload: Workload, slos: dict[str, float], rate: float, args: argparse.Namespace, seed: int
) -> dict[str, dict[str, Any]]:
    with start_squishy(workload.repository, ["--executor", "onnxruntime"]) as server:
        result = run(_config(workload, slos, rate, args, server.http_url, seed), isolate=True)
    return {
        model: {"met_fraction": s.met_fraction, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "sent": s.sent}
        for model, s in result.per_model.items()
    }


def print_load(
    share: float, rate: float, twin: dict[str, dict[str, Any]], real: list[dict[str, dict[str, Any]]]
) -> None:
    print(f"  at {100 * share:.0f}% of the measured goodput ({rate:.1f} req/s): twin | server median [min, max]")
    for model, predicted in twin.items():
        met = [r[model]["met_fraction"] for r in real]
        p50 = [r[model]["p50_ms"] for r in real]
        p99 = [r[model]["p99_ms"] for r in real]
        within = f"{100 * predicted['met_fraction']:.2f}% | {100 * statistics.median(met):.2f}%"
        spread = f"[{100 * min(met):.2f}, {100 * max(met):.2f}]"
        p50_text = f"{predicted['p50_ms']:.1f} | {statistics.median(p50):.1f} ms"
        p99_text = f"{predicted['p99_ms']:.1f} | {statistics.median(p99):.1f} ms [{min(p99):.1f}, {max(p99):.1f}]"
        print(f"    {model:14s} within SLO {within} {spread}  p50 {p50_text}  p99 {p99_text}")


if __name__ == "__main__":
    main()

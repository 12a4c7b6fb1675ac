"""The plan follows the machine: a CPU hog starts while squishy serves, and the plan's ℓ(b) converges to
what batches really take, then back when the hog stops.

    .venv/bin/python benchmarks/bench_drift.py [--model resnet18-half] [--rate 40] [--duration 60]

One ``squishy serve`` (ONNX Runtime, 2 slots × 1 thread) serves one example model at a fixed open-loop
rate for ``--duration`` s. From ``--hog-start`` to ``--hog-stop`` s, ``--hog`` processes spin on the
CPUs. Every ``--window`` s the script reads the server's own numbers:

- the batches' real ℓ(b) in that window, from Triton's statistics (compute time per batch size);
- the slowdown the server observed (``squishy_observed_slowdown``) and so the ℓ(b) its planner packs
  with: the start-up profile × max(the profile margin, the slowdown), as ``control.variants`` and the
  scheduler's margin compose them;
- the backends the plan uses, and goodput within the SLO by the client's clock.

The figure to read is *planned ÷ real* ℓ at the most used batch size: near or above 1 the plan is not
promising more than the machine does; well below 1 it is planning for a machine that is not there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from squishy.bench import BenchConfig, ModelLoad, run
from squishy.bench.launch import start_squishy
from squishy.examples import build_examples
from squishy.profiles.profiler import cache_path
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import Settings

RESULTS = Path("results/drift")
SLOTS, THREADS = 2, 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18-half")
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s, open loop (Poisson)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--hog-start", type=float, default=20.0)
    parser.add_argument("--hog-stop", type=float, default=40.0)
    parser.add_argument("--hog", type=int, default=2, help="spinning processes while the hog runs")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per reading")
    args = parser.parse_args()

    repository = RESULTS / "repository"
    build_examples(repository, only=(args.model,))
    spec = ModelRepository(repository).load(args.model)[0]
    margin = Settings().profile_inflation
    with start_squishy(
        repository, ["--executor", "onnxruntime", "--slots", str(SLOTS), "--threads-per-slot", str(THREADS)]
    ) as server:
        assert spec.model_path is not None
        profile = json.loads(cache_path(spec.model_path, THREADS, SLOTS).read_text())
        profiled = {int(b): float(ms) for b, ms in profile["batch_ms"].items()}
        config = BenchConfig(
            models=(ModelLoad(args.model, args.rate, spec.slo_ms),),
            url=server.http_url,
            duration_s=args.duration,
            warmup_s=0.0,
            seed=3,
        )
        outcome: dict[str, Any] = {}
        load = threading.Thread(target=lambda: outcome.update(result=run(config)), daemon=True)
        started = time.monotonic()
        load.start()
        hogs: list[multiprocessing.Process] = []
        readings = []
        previous = batch_stats(server.http_url, args.model)
        next_reading = args.window
        while load.is_alive():
            elapsed = time.monotonic() - started
            if not hogs and args.hog_start <= elapsed < args.hog_stop:
                hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hog)]
                for hog in hogs:
                    hog.start()
            if hogs and elapsed >= args.hog_stop:
                _stop(hogs)
            if elapsed >= next_reading:
                current = batch_stats(server.http_url, args.model)
                readings.append(reading(elapsed, previous, current, profiled, margin, server.metrics(), args))
                previous = current
                next_reading += args.window
                print(_line(readings[-1]))
            time.sleep(0.1)
        _stop(hogs)
        load.join()
    result = outcome["result"]
    log = result.log
    met = log.met_slo([spec.slo_ms])
    for entry in readings:  # goodput within the SLO per window, from the client's clock
        window = (log.scheduled_s >= entry["t_s"] - args.window) & (log.scheduled_s < entry["t_s"])
        entry["met_fraction"] = float(met[window].mean()) if window.any() else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"drift-{args.model}.json"
    report = {"model": args.model, "rate_per_s": args.rate, "date": date.today().isoformat(), "readings": readings}
    out.write_text(json.dumps({**report, "args": vars(args)}, indent=2) + "\n")
    print("window end | hog | real ℓ(b) | planned ℓ(b) | planned ÷ real | slowdown | backends | within SLO")
    for entry in readings:
        print(_line(entry, with_met=True))
    print(f"results: {out}")


def reading(
    elapsed: float,
    previous: dict[int, tuple[int, int]],
    current: dict[int, tuple[int, int]],
    profiled: dict[int, float],
    margin: float,
    metrics: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One window: the most used batch size's real and planned ℓ, the slowdown, the plan's backends."""
    deltas = {b: (n - previous.get(b, (0, 0))[0], ns - previous.get(b, (0, 0))[1]) for b, (n, ns) in current.items()}
    used = {b: d for b, d in deltas.items() if d[0] > 0}
    slowdown = _gauge(metrics, "squishy_observed_slowdown", args.model)
    entry: dict[str, Any] = {
        "t_s": round(elapsed, 1),
        "slowdown": slowdown,
        "backends": _gauge(metrics, "squishy_plan_backends", None),
    }
    if used:
        batch = max(used, key=lambda b: used[b][0] * b)
        count, ns = used[batch]
        real_ms = ns / count / 1e6
        planned_ms = float(np.interp(batch, sorted(profiled), [profiled[b] for b in sorted(profiled)]))
        planned_ms *= max(margin, slowdown)
        entry.update(batch=batch, real_ms=real_ms, planned_ms=planned_ms, planned_over_real=planned_ms / real_ms)
    entry["hog"] = bool(args.hog_start < elapsed and elapsed - args.window < args.hog_stop)
    return entry


def batch_stats(url: str, model: str) -> dict[int, tuple[int, int]]:
    """Batch size → (executions, compute-infer ns) so far, from Triton's statistics endpoint."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as reply:
        stats = json.load(reply)["model_stats"][0]
    return {
        int(entry["batch_size"]): (int(entry["compute_infer"]["count"]), int(entry["compute_infer"]["ns"]))
        for entry in stats.get("batch_stats", [])
    }


def _gauge(metrics: str, name: str, model: str | None) -> float:
    for line in metrics.splitlines():
        if line.startswith(name) and (model is None or f'model="{model}"' in line):
            match = re.search(r" (\S+)$", line)
            if match:
                return float(match.group(1))
    return float("nan")


def _line(entry: dict[str, Any], with_met: bool = False) -> str:
    if "real_ms" not in entry:
        return f"{entry['t_s']:6.1f} s | no batches"
    met = entry.get("met_fraction")
    tail = f" | {100 * met:5.1f}%" if with_met and met is not None else ""
    return (
        f"{entry['t_s']:6.1f} s | {'hog' if entry['hog'] else '   '} | "
        f"ℓ({entry['batch']}) {entry['real_ms']:6.1f} ms | "
        f"{entry['planned_ms']:6.1f} ms | {entry['planned_over_real']:5.2f} | {entry['slowdown']:5.2f} | "
        f"{entry['backends']:.0f}{tail}"
    )


def _spin() -> None:
    while True:
        pass


def _stop(hogs: list[multiprocessing.Process]) -> None:
    for hog in hogs:
        hog.kill()
        hog.join()
    hogs.clear()


if __name__ == "__main__":
    main()

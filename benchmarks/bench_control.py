"""The control loop under a step in load, in the server and in the twin, on the same arrival trace.

    .venv/bin/python benchmarks/bench_control.py [--step-s 18] [--runs 1]

``digits`` (SLO 20 ms) steps 200 → 1,200 → 200 requests/s beside ``resnet18-half`` (SLO 200 ms) at a
steady 40 requests/s, served from a repository of these two models, ``--step-s`` seconds per step,
Poisson arrivals. Against ``squishy serve`` (ONNX Runtime) and against the twin (``squishy.sim.twin``,
calibrated by ``bench_twin.py --part calibrate``), this prints every plan installed (when, why, for what
multiple of the measured load) and each model's share of requests within its SLO per step and per
5-second window, so that one can check:
- at most two plan installs per load step;
- no plan sized below the load the slots can carry (a headroom below 1 only when the load does not fit);
- after the step down, every model back to its pre-step share within SLO within two epochs.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from squishy.arrivals import Arrivals, RateSchedule, schedule, source_streams
from squishy.bench import BenchConfig, ModelLoad, run
from squishy.bench.calibrate import Calibration
from squishy.bench.launch import start_squishy
from squishy.cluster import slot_layout
from squishy.examples import build_examples
from squishy.runtime.core import ServingConfig
from squishy.sim.simulation import RequestTrace
from squishy.sim.twin import Twin

RESULTS = Path("results/control")
# The two models and no others: a model in the repository is planned for (at the floor rate) whether or
# not it gets traffic, and the twin models exactly these two.
REPOSITORY = RESULTS / "repository"
CALIBRATION = Path("results/twin/calibration.json")
STEPPED, STEADY = "digits", "resnet18-half"
LEVELS = (200.0, 1200.0, 200.0)
STEADY_RATE = 40.0
SLOS = {STEPPED: 20.0, STEADY: 200.0}
WINDOW_S = 5.0
SEED = 11
PLAN_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*plan \((\w+)\): (\d+) backends, \d+ sessions, headroom ([\d.]+)x"
)


def stepped_trace(step_s: float) -> tuple[np.ndarray, Arrivals]:
    """The stepped model's send times (s) and their replay; Poisson within each step."""
    starts = tuple(step_s * i for i in range(len(LEVELS)))
    stream = source_streams(
        [LEVELS[0]], Arrivals.poisson(), SEED, RateSchedule(starts, tuple(level / LEVELS[0] for level in LEVELS))
    )[0]
    times_s = stream.until(step_s * len(LEVELS) * 1000.0) / 1000.0
    return times_s, Arrivals.replay(times_s.tolist())


def processes(step_s: float) -> tuple[list[float], list[Arrivals]]:
    _, replay = stepped_trace(step_s)
    return [LEVELS[0], STEADY_RATE], [replay, Arrivals.poisson()]


def server_run(step_s: float) -> dict[str, Any]:
    rates, arrivals = processes(step_s)
    loads = tuple(
        ModelLoad(model, rate, SLOS[model], arrivals=process)
        for model, rate, process in zip((STEPPED, STEADY), rates, arrivals, strict=True)
    )
    duration = step_s * len(LEVELS)
    with start_squishy(REPOSITORY, ["--executor", "onnxruntime"]) as server:
        config = BenchConfig(models=loads, url=server.http_url, duration_s=duration, warmup_s=0.0, seed=SEED)
        started = time.time()
        result = run(config, isolate=True)
        time.sleep(1.0)
        lines = list(server.output)
    installs = []
    for line in lines:
        match = PLAN_LINE.search(line)
        if match is None:
            continue
        stamp = time.mktime(time.strptime(match.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(match.group(1)[20:]) / 1000
        offset = stamp - started
        if offset >= -0.5:
            installs.append({"time_s": round(offset, 2), "reason": match.group(2), "backends": int(match.group(3)),
                             "headroom": float(match.group(4))})  # fmt: skip
    log = result.log
    met = log.met_slo([SLOS[m] for m in (STEPPED, STEADY)])
    per_model = {}
    for index, model in enumerate((STEPPED, STEADY)):
        mine = log.model_index == index
        per_model[model] = windows(log.scheduled_s[mine], met[mine], duration, step_s)
    return {"installs": installs, "per_model": per_model}


def twin_run(step_s: float, calibration: Calibration) -> dict[str, Any]:
    rates, arrivals = processes(step_s)
    duration = step_s * len(LEVELS)
    offsets_s, source = schedule(rates, arrivals, duration, SEED)
    twin = Twin(REPOSITORY, calibration, {STEPPED: 0.5, STEADY: 0.5}, slot_layout())
    simulation = twin.simulation(RequestTrace(offsets_s * 1000.0, source.astype(np.int64)), rates, duration, 0.0, SEED)
    simulation.run()
    installs = [
        {"time_s": r["time_s"], "reason": r["reason"], "backends": r["backends"], "headroom": r["headroom"]}
        for r in simulation.replans
    ]
    metrics = simulation.metrics
    per_model = {}
    for index, model in enumerate((STEPPED, STEADY)):
        sent = metrics.source_sent_series[index]
        bad = metrics.source_bad_series[index]
        per_model[model] = series_windows(sent, bad, duration, step_s)
    return {"installs": installs, "per_model": per_model}


def windows(scheduled_s: np.ndarray, met: np.ndarray, duration: float, step_s: float) -> dict[str, Any]:
    edges = np.arange(0.0, duration + 1e-9, WINDOW_S)
    which = np.digitize(scheduled_s, edges) - 1
    share = [float(met[which == i].mean()) if np.any(which == i) else None for i in range(len(edges) - 1)]
    steps = [
        float(met[(scheduled_s >= k * step_s) & (scheduled_s < (k + 1) * step_s)].mean()) for k in range(len(LEVELS))
    ]
    return {"window_s": WINDOW_S, "met_by_window": share, "met_by_step": steps}


def series_windows(sent: np.ndarray, bad: np.ndarray, duration: float, step_s: float) -> dict[str, Any]:
    """The same from the simulator's per-second series (sent and bad by send second)."""
    seconds = round(duration)
    width = int(WINDOW_S)
    share = []
    for start in range(0, seconds, width):
        total = int(sent[start : start + width].sum())
        share.append(1.0 - int(bad[start : start + width].sum()) / total if total else None)
    steps = []
    for k in range(len(LEVELS)):
        lo, hi = int(k * step_s), int((k + 1) * step_s)
        total = int(sent[lo:hi].sum())
        steps.append(1.0 - int(bad[lo:hi].sum()) / total if total else None)
    return {"window_s": WINDOW_S, "met_by_window": share, "met_by_step": steps}


def report(name: str, outcome: dict[str, Any], step_s: float, epoch_s: float) -> None:
    print(f"\n== {name}")
    for step in range(len(LEVELS)):
        lo, hi = step * step_s, (step + 1) * step_s
        mine = [i for i in outcome["installs"] if lo <= i["time_s"] < hi]
        shown = ", ".join(
            f"{i['time_s']:.1f} s {i['reason']} ({i['backends']} backends, {i['headroom']:.2f}x)" for i in mine
        )
        print(f"  step {step + 1} ({LEVELS[step]:g} req/s of {STEPPED}): {len(mine)} plan install(s): {shown or '-'}")
    for model, figures in outcome["per_model"].items():
        steps = " / ".join(f"{100 * s:.2f}%" for s in figures["met_by_step"])
        windows_text = " ".join("-" if w is None else f"{100 * w:.1f}" for w in figures["met_by_window"])
        print(f"  {model:14s} within SLO by step: {steps}; by {WINDOW_S:g} s window: {windows_text}")
    del epoch_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-s", type=float, default=18.0)
    parser.add_argument("--runs", type=int, default=1, help="server runs")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    build_examples(REPOSITORY, only=(STEPPED, STEADY))
    epoch_s = ServingConfig().epoch_s
    outcome: dict[str, Any] = {"step_s": args.step_s, "levels": LEVELS, "steady_rate": STEADY_RATE}
    outcome["twin"] = twin_run(args.step_s, Calibration.load(CALIBRATION))
    report("twin (simulator)", outcome["twin"], args.step_s, epoch_s)
    outcome["server"] = []
    for index in range(args.runs):
        measured = server_run(args.step_s)
        outcome["server"].append(measured)
        report(f"squishy serve, run {index + 1}", measured, args.step_s, epoch_s)
    (RESULTS / "control.json").write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"\nresults: {RESULTS / 'control.json'}")


if __name__ == "__main__":
    main()

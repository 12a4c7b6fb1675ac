"""``squishy simulate NAME|FILE``: run a shipped study (or a scenario file) in the cluster simulator and
write its results (JSON) and plots (PNG). Wall-clock timings go to stdout only."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from squishy.sim.scenario import load_scenario, shipped_scenarios


def add_parser(subparsers: Any) -> None:
    names = ", ".join(shipped_scenarios())
    parser = subparsers.add_parser(
        "simulate",
        help="run a Nexus case study or a scenario file in the cluster simulator",
        description=f"Shipped studies: {names}. A scenario file is a workload file with a 'simulation:' section.",
    )
    parser.add_argument("scenario", help="a shipped study name or a scenario file (YAML or JSON)")
    parser.add_argument("--out", default=None, help="output directory (default: sim-results/NAME)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    parser.add_argument("--workers", type=int, default=None, help="processes for independent runs (default: cores)")
    parser.add_argument("--quick", action="store_true", help="a tiny version of the study (smoke test)")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from squishy.sim.studies import StudyOptions, run_study, study_size

    scenario = load_scenario(args.scenario)
    options = StudyOptions(seed=args.seed, quick=args.quick, workers=args.workers)
    out_dir = Path(args.out or Path("sim-results") / scenario.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tqdm(total=study_size(scenario, options), desc=f"{scenario.name} ({scenario.study})", unit="job") as bar:
        results = run_study(scenario, options, bar.update)
    elapsed = time.perf_counter() - started
    json_path = out_dir / f"{scenario.name}.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {json_path}")
    if not args.no_plots:
        from squishy.sim.plots import plot_study

        for path in plot_study(results, out_dir, scenario.name):
            print(f"plot: {path}")
    print(f"wall clock: {elapsed:.1f} s")
    simulated = results.get("requests_simulated")
    if simulated:
        print(f"requests simulated: {simulated:,} ({simulated / elapsed:,.0f} per second of wall clock)")
    inference = results.get("inference_requests_simulated")
    if inference:
        print(f"inference requests (query stages one by one): {inference:,} ({inference / elapsed:,.0f} per second)")
    return 0

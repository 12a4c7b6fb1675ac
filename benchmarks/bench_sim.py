"""Simulator speed: requests simulated per second of wall clock on the 100-backend ``large`` scenario.

Runs the first SECONDS of the scenario (the trough load and its first steps, control loop on) and prints
requests simulated, wall-clock time and requests per second. The goal: 50 million requests in under
10 minutes, i.e. above ~83,000 requests per second on this machine.

    .venv/bin/python benchmarks/bench_sim.py [--seconds 300] [--seed 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from squishy.sim.scenario import load_scenario
from squishy.sim.studies import StudyOptions, large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    scenario = load_scenario("large")
    simulation = dict(scenario.simulation)
    simulation["duration_s"] = args.seconds
    steps = [s for s in simulation.get("rate_schedule", [[0, 1.0]]) if s[0] < args.seconds]
    simulation["rate_schedule"] = steps
    scenario = replace(scenario, simulation=simulation)
    started = time.perf_counter()
    results = large(scenario, StudyOptions(seed=args.seed), lambda _: None)
    elapsed = time.perf_counter() - started
    count = results["requests_simulated"]
    print(f"simulated {args.seconds:g} s of {results['scenario']}: {count:,} requests in {elapsed:.1f} s")
    print(f"requests simulated per second: {count / elapsed:,.0f}")
    print(f"projected time for 50 million requests: {50e6 / (count / elapsed):.0f} s")


if __name__ == "__main__":
    main()

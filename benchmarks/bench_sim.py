"""Simulator speed: requests simulated per second of wall clock on the 100-backend ``large`` scenario.

Runs the first SECONDS of the scenario (the trough load and its first steps, control loop on) and prints
requests simulated, wall-clock time and requests per second. The goal: 50 million requests in under
10 minutes, i.e. above ~83,000 requests per second on this machine.

    .venv/bin/python benchmarks/bench_sim.py [--seconds 300] [--seed 1] [--profile 25]

``--profile N`` runs it under cProfile and prints the N functions with the most time of their own (the
profiler's overhead makes that run slower: its requests per second are not the headline).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from dataclasses import replace

from squishy.sim.scenario import load_scenario
from squishy.sim.studies import StudyOptions, large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    args = parser.parse_args()
    scenario = load_scenario("large")
    simulation = dict(scenario.simulation)
    simulation["duration_s"] = args.seconds
    steps = [s for s in simulation.get("rate_schedule", [[0, 1.0]]) if s[0] < args.seconds]
    simulation["rate_schedule"] = steps
    scenario = replace(scenario, simulation=simulation)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    results = large(scenario, StudyOptions(seed=args.seed), lambda _: None)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    count = results["requests_simulated"]
    print(f"simulated {args.seconds:g} s of {results['scenario']}: {count:,} requests in {elapsed:.1f} s")
    print(f"requests simulated per second: {count / elapsed:,.0f}")
    print(f"projected time for 50 million requests: {50e6 / (count / elapsed):.0f} s")
    if profiler is not None:
        print("(under cProfile: slower than without it)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()

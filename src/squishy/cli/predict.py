"""``squishy predict --repository DIR --calibration FILE --mix a:0.7,b:0.3 --rate R``: what ``squishy serve``
will do on this machine under that load, before deploying it: the twin (``squishy.sim.twin``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from squishy.errors import SquishyError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict squishy serve's SLO attainment and latency on this machine (the simulator as a twin)",
        description=(
            "Simulates `squishy serve` on this machine: the repository's profiles (measured here, cached beside "
            "the models), the server's own control loop and batching, and the CPU per request measured by "
            "`squishy calibrate`. Prints each model's share within its SLO and p50/p99 latency at --rate, or with "
            "--search the highest total rate at which every model keeps 99%% within its SLO."
        ),
    )
    parser.add_argument("--repository", required=True)
    parser.add_argument("--calibration", help="squishy calibrate's output (default: none, an ideal machine)")
    parser.add_argument("--mix", required=True, help="model:share,... (shares of the total rate)")
    parser.add_argument("--rate", type=float, default=100.0, help="total requests/s (default: %(default)s)")
    parser.add_argument("--arrivals", default="poisson", help="poisson, uniform or gamma:CV (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search", action="store_true", help="find the goodput at 99%% within SLO")
    parser.set_defaults(func=run)


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.partition(":")
        try:
            value = float(share) if share else 1.0
        except ValueError:
            raise SquishyError(f"--mix: share of {name!r} is not a number: {share!r}") from None
        if not name or not value > 0:
            raise SquishyError(f"--mix: give model:share pairs with positive shares, got {part!r}")
        mix[name] = value
    total = sum(mix.values())
    return {name: value / total for name, value in mix.items()}


def run(args: argparse.Namespace) -> int:
    from squishy.arrivals import Arrivals
    from squishy.bench.calibrate import Calibration
    from squishy.sim.twin import Twin, physical_limit

    calibration = Calibration.load(Path(args.calibration)) if args.calibration else None
    mix = parse_mix(args.mix)
    if calibration is not None:
        missing = sorted(set(mix) - set(calibration.models))
        if missing:
            raise SquishyError(
                f"the calibration has no figures for {', '.join(missing)}: run squishy calibrate on them"
            )
    twin = Twin(Path(args.repository), calibration, mix, arrivals=Arrivals.parse(args.arrivals),
                duration_s=args.duration)  # fmt: skip
    machine = "this machine" if calibration is not None else "an ideal machine (no request handling cost)"
    print(f"{twin.layout.slots} slots on {machine}; the slots alone could do {physical_limit(twin):.1f} req/s")
    if args.search:
        found = twin.search(start_per_s=max(physical_limit(twin) * 0.7, 1.0), seed=args.seed)
        print(f"goodput (every model ≥ 99% within its SLO): {found.rate:.1f} req/s")
        for trial in found.curve:
            print(f"  {trial.rate:9.1f} req/s  seed {trial.seed}: {'pass' if trial.passed else 'fail'}")
        return 0
    result = twin.predict(args.rate, args.seed)
    print(f"at {args.rate:g} req/s ({args.arrivals}):")
    for model, stats in result.per_model.items():
        met = stats["met_fraction"]
        shown = "-" if math.isnan(met) else f"{100 * met:.2f}%"
        print(f"  {model}: {shown} within {stats['slo_ms']:g} ms, p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms")
    return 0

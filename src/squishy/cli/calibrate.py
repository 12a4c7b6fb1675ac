"""``squishy calibrate --repository DIR``: measure what one request costs this machine outside the models
(the server's event loop and slot threads, and a load generator beside them), for ``squishy predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure the serving stack's CPU per request on this machine (for squishy predict)",
        description=(
            "Starts `squishy serve --executor null-zero` on the repository and drives each model alone at a few "
            "fixed rates with squishy's load generator; the CPU its event loop, slot threads and the generator use, "
            "per request, is written as JSON. Run it on a quiet machine: the figures are CPU time."
        ),
    )
    parser.add_argument("--repository", required=True, help="model repository directory")
    parser.add_argument("--models", help="comma-separated models (default: every model in the repository)")
    parser.add_argument("--out", default="calibration.json", help="output file (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from squishy.bench.calibrate import calibrate
    from squishy.runtime.repository import ModelRepository

    repository = Path(args.repository)
    models = args.models.split(",") if args.models else ModelRepository(repository).model_names()
    calibration = calibrate(repository, models, duration_s=args.duration, progress=sys.stderr.isatty())
    calibration.save(Path(args.out))
    print(f"calibration of {len(models)} model(s) on {calibration.cores} cores ({calibration.machine}): {args.out}")
    for model, costs in calibration.models.items():
        loop = ", ".join(
            f"{f + r:.2f} ms at {rate:g}/s"
            for rate, f, r in zip(costs.rates_per_s, costs.frontend_ms, costs.reply_ms, strict=True)
        )
        print(f"  {model}: event loop {loop}; slot thread {costs.slot_batch_ms:.2f} ms per batch")
    return 0

"""``squishy variants MODEL.onnx``: generate, check, profile and measure variants; write a repository entry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from squishy.variants.generate import BUILDS, Validation, generate_variants


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "variants",
        help="generate accuracy/cost variants of an ONNX model, measured here, as a model-repository task",
        description=(
            "Build variants of an ONNX model (ONNX Runtime optimisation levels, int8 dynamic and static "
            "quantisation, fp16, a TVM-compiled library), check each one's answers against the original's, "
            "measure its accuracy on your validation set and its cost here, keep the Pareto-better ones, and "
            "write them with a task (platform squishy_variants) into a model repository that squishy serve "
            "loads as is."
        ),
    )
    parser.add_argument("models", nargs="+", help="ONNX model file(s) of one task (several: variants of each)")
    parser.add_argument(
        "--validation",
        required=True,
        help="a .npz with one array per model input (samples first) and 'labels' (the class of each sample)",
    )
    parser.add_argument("--repository", required=True, help="model repository to write into")
    parser.add_argument("--name", required=True, help="the task's name (variants are named NAME-<build>)")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="the task's SLO (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=32, help="max_batch_size of the entries (default: 32)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per slot, for the profiles")
    parser.add_argument("--output", help="the output holding class scores or labels (default: the first)")
    parser.add_argument(
        "--builds", default=",".join(BUILDS), help="comma-separated builds to try (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    generate_variants(
        [Path(m) for m in args.models],
        Validation.load(args.validation),
        Path(args.repository),
        name=args.name,
        slo_ms=args.slo_ms,
        max_batch=args.max_batch,
        threads=args.threads,
        output=args.output,
        builds=builds,
        progress=lambda line: print(line, flush=True),
    )
    return 0

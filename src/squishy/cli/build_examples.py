"""``squishy build-examples DIR``: build the example model repository (skips models already up to date)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from squishy.errors import SquishyError
from squishy.examples import build_examples


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build-examples",
        help="build the example model repository (digits, smallcnn, resnet18-half, optional PP-OCR)",
        description="Build the example model repository in Triton's layout; models already up to date are skipped.",
    )
    parser.add_argument("directory", help="repository directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed for training and random weights (default: 0)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="MODEL", help="build only this model; repeatable"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start_s = time.perf_counter()
    try:
        results = build_examples(args.directory, seed=args.seed, only=args.only, force=args.force)
    except ValueError as exc:
        raise SquishyError(str(exc)) from None
    width = max(len(r.name) for r in results) if results else 0
    for result in results:
        detail = f" ({result.detail})" if result.detail else ""
        print(f"{result.name.ljust(width)}  {result.status}{detail}")
    print(f"repository {args.directory} ready in {time.perf_counter() - start_s:.1f} s")
    return 0

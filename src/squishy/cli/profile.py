"""``squishy profile MODEL.onnx``: measure ℓ(b) with ONNX Runtime on this machine and write a profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from squishy.errors import ProfileError
from squishy.profiles.profile import Profile
from squishy.profiles.profiler import DEFAULT_BATCHES, DEFAULT_REPEATS, DEFAULT_WARMUP, measure_profile, write_profile


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure a model's batch latency ℓ(b) with ONNX Runtime here and write a profile",
        description="Measure a model's batch latency ℓ(b) with ONNX Runtime on this machine and write a profile.",
    )
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument(
        "--batches",
        default=",".join(map(str, DEFAULT_BATCHES)),
        help="comma-separated batch sizes (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: 1)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="run this many copies at once, as that many serving slots would (default: 1)",
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help="untimed runs per batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="sizes of an input's variable dimensions, without the batch dimension (e.g. image=3,224,224); repeatable",
    )
    parser.add_argument(
        "--name",
        help="model name in the profile (default: <model> for <repo>/<model>/<version>/model.onnx, else the file stem)",
    )
    parser.add_argument("--out", help="profile file to write (default: <model stem>.profile.json next to the model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = Path(args.model)
    batches = _parse_batches(args.batches)
    shapes = dict(_parse_shape(text) for text in args.shape)
    profile = measure_profile(
        model,
        model_name=args.name,
        batches=batches,
        threads=args.threads,
        concurrency=args.concurrency,
        warmup=args.warmup,
        repeats=args.repeats,
        shapes=shapes,
        progress=not args.no_progress,
    )
    out = Path(args.out) if args.out else model.with_name(f"{model.stem}.profile.json")
    write_profile(profile, out)
    print(render(profile))
    if profile.extra.get("disturbed"):
        print(
            f"warning: other work on this machine disturbed the measurement ({profile.extra['disturbed']}); "
            f'the file says "disturbed": measure again on a quiet machine',
            file=sys.stderr,
        )
    # What the scheduler will make of it when it loads the file.
    for change in Profile.from_dict(profile.to_dict()).changes:
        print(f"note: when loaded, {change}")
    print(f"wrote {out}")
    return 0


def render(profile: Profile) -> str:
    rows = [("batch", "ℓ(b) ms", "std ms", "ms/input", "inputs/s")]
    for batch, latency_ms in sorted(profile.batch_ms.items()):
        rows.append(
            (
                str(batch),
                f"{latency_ms:.3f}",
                f"{profile.std_ms.get(batch, 0.0):.3f}",
                f"{latency_ms / batch:.3f}",
                f"{1000.0 * batch / latency_ms:.0f}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(0, f"{profile.model} on {profile.device}")
    return "\n".join(lines)


def _parse_batches(text: str) -> list[int]:
    try:
        sizes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ProfileError(f"--batches {text!r}: expected comma-separated positive integers") from None
    if not sizes or min(sizes) < 1:
        raise ProfileError(f"--batches {text!r}: expected comma-separated positive integers")
    return sizes


def _parse_shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.partition("=")
    try:
        sizes = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        sizes = []
    if not sep or not name or not sizes or min(sizes) < 1:
        raise ProfileError(f"--shape {text!r}: expected NAME=DIMS with positive sizes, e.g. image=3,224,224")
    return name, sizes

"""The ``squishy`` command: one sub-command per job; each module parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from squishy import __version__
from squishy.errors import SquishyError

# Sub-command modules, each with add_parser(subparsers) that sets ``func`` on its parser.
COMMANDS = ("plan", "profile", "simulate", "predict", "calibrate", "serve", "bench", "build_examples", "variants")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squishy",
        description="Serve many DNNs under latency SLOs on as few backends as possible.",
    )
    parser.add_argument("--version", action="version", version=f"squishy {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in COMMANDS:
        try:
            module = importlib.import_module(f"squishy.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"squishy.cli.{name}":
                continue  # that job has not landed in this build
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SquishyError as exc:
        print(f"squishy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("squishy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

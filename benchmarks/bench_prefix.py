"""Prefix batching against serving each model alone: the game-like example's three classifiers, which share
one costly trunk, at equal rates, served with prefix batching (squishy's default) and with
``--no-prefix-batching`` (each model its own session and executor, trunk included, as a server without
prefix batching runs them).

    .venv/bin/python benchmarks/bench_prefix.py [--search-duration 8] [--slo-ms 100]

For each mode, the highest total rate at which every model keeps ≥ 99% of its requests within its SLO, by
the client's clock (the search of ``squishy.bench``: a grid of rates, bisection in the highest passing
bracket, a confirming run on the next seed; a fresh server per step), ONNX Runtime on this machine's slots.
The models' answers are the same either way (``tests/e2e/test_prefix.py``); what differs is how requests
batch: one trunk batch over all three models' requests, or three sessions batching apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from squishy.bench import BenchConfig, ModelLoad, SearchSettings, search
from squishy.bench.launch import start_squishy
from squishy.examples import build_examples
from squishy.examples.game import TASKS

RESULTS = Path("results/prefix")
MODES = {"prefix batching": [], "each model alone": ["--no-prefix-batching"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search-duration", type=float, default=8.0, help="measured seconds per search step")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="the SLO each model is judged by (its config's)")
    parser.add_argument("--start", type=float, default=300.0, help="total req/s the search starts from")
    args = parser.parse_args()

    repository = RESULTS / "repository"
    build_examples(repository, only=tuple(TASKS))
    report: dict[str, object] = {"date": date.today().isoformat(), "models": list(TASKS), "slo_ms": args.slo_ms}
    maxima: dict[str, float] = {}
    curves: dict[str, object] = {}
    for mode, arguments in MODES.items():
        loads = tuple(ModelLoad(name, args.start / len(TASKS), args.slo_ms) for name in TASKS)
        config = BenchConfig(
            models=loads, url="http://127.0.0.1:0", duration_s=args.search_duration, warmup_s=4.0, seed=7
        )
        found = search(
            config,
            SearchSettings(tolerance=0.03, cooldown_s=0.0),
            isolate=True,
            fresh_server=fresh(repository, arguments),
        )
        maxima[mode] = found.rate_per_s
        curves[mode] = found.to_dict()
        print(
            f"{mode:17s}: max total rate with every model ≥ 99% within {args.slo_ms:g} ms: {found.rate_per_s:.0f} req/s"
        )
    ratio = maxima["prefix batching"] / maxima["each model alone"] if maxima["each model alone"] else float("inf")
    print(f"prefix batching ÷ each model alone: {ratio:.2f}")
    report.update(max_rate_per_s=maxima, ratio=ratio, searches=curves)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "prefix.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}")


def fresh(repository: Path, arguments: list[str]):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        with start_squishy(repository, ["--executor", "onnxruntime", "--epoch-s", "2", *arguments]) as server:
            yield server.http_url

    return fresh_server


if __name__ == "__main__":
    main()

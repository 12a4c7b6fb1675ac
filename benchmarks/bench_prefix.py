"""Prefix batching against serving each model alone, for 4, 8 and 16 variants of one trunk, and the memory
each way uses.

    .venv/bin/python benchmarks/bench_prefix.py [--families tower,game] [--variants 4,8,16]
        [--search-duration 8] [--slo-ms 100] [--slots 1]

A family (``squishy.examples.game``) is one trunk and a head per task, each head trained on scikit-learn's
digits: ``tower`` (a 218 MB MLP, bound by reading its weights at batch 1, so its batches are steep, as a
GPU's are) and ``game`` (a ResNet-18-like CNN, compute-bound from batch 1 on this CPU, so its batches are
flat). For each family and variant count the N models are served at equal rates with prefix batching
(squishy's default: one trunk batch over every model's requests, then each head on its rows) and with
``--no-prefix-batching`` (each model its own session and executor, trunk included, as a server without
prefix batching runs them); the answers are the same either way (``tests/e2e/test_prefix.py``).

Reported per mode: the highest total rate at which every model keeps ≥ 99% of its requests within its
SLO, by the client's clock (the search of ``squishy.bench``: a grid of rates, bisection in the highest
passing bracket, a confirming run on the next seed; a fresh server per step), and the server's memory:
resident while serving (``VmRSS`` at the end of a step, the largest over the search) and its peak
(``VmHWM``, which includes start-up, when each model's graph is read and cut). One slot of one thread by
default, so that the machine's other core runs the server's front door and the load generator and the
backend is what binds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from squishy.bench import BenchConfig, ModelLoad, SearchSettings, search
from squishy.bench.launch import start_squishy
from squishy.examples.build import build_model, prefix_family
from squishy.examples.game import TASKS

RESULTS = Path("results/prefix")
MODES = {"prefix batching": [], "each model alone": ["--no-prefix-batching"]}
# Where each family's search starts (total req/s): about its max with prefix batching on one slot.
START_RATE = {"tower": 1600.0, "game": 800.0}
MAX_BATCH = {"tower": 64, "game": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="tower,game", help="comma-separated: tower, game")
    parser.add_argument("--variants", default="4,8,16", help=f"comma-separated counts, at most {len(TASKS)}")
    parser.add_argument("--search-duration", type=float, default=8.0, help="measured seconds per search step")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="every model's SLO")
    parser.add_argument("--slots", type=int, default=1, help="execution slots (one thread each)")
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    counts = [int(n) for n in args.variants.split(",")]
    if not all(1 <= n <= len(TASKS) for n in counts) or not set(families) <= set(START_RATE):
        parser.error(f"variants are 1..{len(TASKS)}, families among {', '.join(START_RATE)}")

    report: dict[str, object] = {
        "date": date.today().isoformat(),
        "slo_ms": args.slo_ms,
        "slots": args.slots,
        "search_duration_s": args.search_duration,
        "runs": [],
    }
    print("memory: resident while serving (peak)")
    print(f"{'family':6s} {'N':>3s}  {'prefix batching':>29s}  {'each model alone':>29s}  ratio")
    for family in families:
        models = prefix_family(family, list(TASKS)[: max(counts)], slo_ms=args.slo_ms, max_batch_size=MAX_BATCH[family])
        models_dir = RESULTS / "models" / family
        for model in models:
            build_model(models_dir, model)
        for count in counts:
            repository = _repository(models_dir, [m.name for m in models[:count]], RESULTS / f"{family}-{count}")
            run = _compare(family, [m.name for m in models[:count]], repository, args)
            report["runs"].append(run)  # type: ignore[attr-defined]
            out = RESULTS / "prefix.json"
            out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {RESULTS / 'prefix.json'}")


def _repository(models_dir: Path, names: list[str], path: Path) -> Path:
    """A repository of the first N models, hard-linked to the built ones: no copy of the weights, and
    nothing resolves outside the repository (the server refuses symbolic links that do)."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir() and entry.name not in names:
            shutil.rmtree(entry)
    for name in names:
        if not (path / name).exists():
            shutil.copytree(models_dir / name, path / name, copy_function=os.link)
    return path


def _compare(family: str, names: list[str], repository: Path, args: argparse.Namespace) -> dict[str, object]:
    run: dict[str, object] = {"family": family, "variants": len(names), "models": names}
    cells = []
    for mode, arguments in MODES.items():
        start = START_RATE[family] if mode == "prefix batching" else START_RATE[family] / 2
        loads = tuple(ModelLoad(name, start / len(names), args.slo_ms) for name in names)
        config = BenchConfig(
            models=loads, url="http://127.0.0.1:0", duration_s=args.search_duration, warmup_s=4.0, seed=7
        )
        memory: list[tuple[int, int]] = []
        found = search(
            config,
            SearchSettings(tolerance=0.03, cooldown_s=0.0),
            isolate=True,
            fresh_server=_fresh(
                repository, [*arguments, "--slots", str(args.slots), "--threads-per-slot", "1"], memory
            ),
        )
        serving_mb, peak_mb = (max(kb[i] for kb in memory) / 1024 for i in (0, 1))
        run[mode] = {
            "max_rate_per_s": found.rate_per_s,
            "serving_rss_mb": serving_mb,
            "peak_rss_mb": peak_mb,
            "search": found.to_dict(),
        }
        cells.append(f"{found.rate_per_s:6.0f} req/s {serving_mb:5.0f} MB ({peak_mb:5.0f})")
    prefix, alone = (run[mode]["max_rate_per_s"] for mode in MODES)  # type: ignore[index]
    run["ratio"] = prefix / alone if alone else None
    ratio = f"{prefix / alone:.2f}" if alone else "inf"
    print(f"{family:6s} {len(names):3d}  {cells[0]:>29s}  {cells[1]:>29s}  {ratio}", flush=True)
    return run


def _fresh(repository: Path, arguments: list[str], memory: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    """A fresh server per search step; its resident and peak memory (kB) are appended to ``memory`` as it
    stops."""

    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        with start_squishy(repository, ["--executor", "onnxruntime", "--epoch-s", "2", *arguments]) as server:
            try:
                yield server.http_url
            finally:
                memory.append(_memory_kb(server.process.pid))

    return fresh_server


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a running process, in kB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


if __name__ == "__main__":
    main()

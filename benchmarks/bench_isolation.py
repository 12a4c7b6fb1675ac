"""Isolation under overload: one model flooded at 3× its fair share while another runs at half of its own.

    .venv/bin/python benchmarks/bench_isolation.py [--model double] [--protocol http|grpc] [--duration 20]

Two copies of one example model (``flood`` and ``steady``, the same graph and SLO) are served by one
``squishy serve``. First the server's max rate for the pair at equal rates is searched (≥ 99% within
the SLO for both, as the client's clock sees it); each model's fair share is half of it. Then, with a
fresh server for each, the door on and off:

- ``flood`` is offered 3× its share and ``steady`` 0.5× its share, open loop, Poisson;
- reported per model: the share of its requests within the SLO, its goodput within the SLO, and for
  ``flood`` that goodput as a share of its fair share. Goals: ``steady`` ≥ 99% within the SLO and
  ``flood`` ≥ 90% of its fair share within the SLO.

The trivial model (``double``) makes the server process the bottleneck, which the front door protects;
``--model resnet18-half`` makes the backends the bottleneck, which the plan and early drop protect.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

from bench_overload import _fresh as fresh
from squishy.bench import BenchConfig, ModelLoad, SearchSettings, run, search
from squishy.examples import build_examples
from squishy.runtime.repository import ModelRepository

RESULTS = Path("results/isolation")
SEED = 11
FLOOD, STEADY = "flood", "steady"
FLOOD_FACTOR, STEADY_FACTOR = 3.0, 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="double", help="example model both copies are (default: double)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--encoding", choices=("json", "binary"), default="json")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the isolation run")
    parser.add_argument("--search-duration", type=float, default=10.0, help="seconds per search step")
    parser.add_argument("--doors", default="on,off", help="door settings to run (default: on,off)")
    args = parser.parse_args()

    repository = pair_repository(args.model)
    slo_ms = ModelRepository(repository).load(FLOOD)[0].slo_ms
    found = search(
        config(args, slo_ms, {FLOOD: 100.0, STEADY: 100.0}, args.search_duration),
        SearchSettings(tolerance=0.03, cooldown_s=0.0),
        isolate=True,
        fresh_server=fresh(repository, "off", args.protocol),
    )
    share = found.rate_per_s / 2
    print(f"max rate of the pair at ≥ 99% within {slo_ms:g} ms (door off): {found.rate_per_s:.0f} req/s")
    print(f"fair share per model: {share:.0f} req/s")
    report: dict[str, Any] = {
        "model": args.model,
        "protocol": args.protocol,
        "encoding": args.encoding,
        "date": date.today().isoformat(),
        "slo_ms": slo_ms,
        "pair_max_rate_per_s": found.rate_per_s,
        "fair_share_per_s": share,
        "runs": {},
    }
    rates = {FLOOD: FLOOD_FACTOR * share, STEADY: STEADY_FACTOR * share}
    for door in [d.strip() for d in args.doors.split(",") if d.strip()]:
        with fresh(repository, door, args.protocol)() as url:
            result = run(config(args, slo_ms, rates, args.duration, url), isolate=True)
        flood, steady = result.per_model[FLOOD], result.per_model[STEADY]
        figures = {
            "flood_offered_per_s": rates[FLOOD],
            "steady_offered_per_s": rates[STEADY],
            "flood_met_fraction": flood.met_fraction,
            "flood_goodput_per_s": flood.goodput_per_s,
            "flood_goodput_share_of_fair_share": flood.goodput_per_s / share if share else 0.0,
            "steady_met_fraction": steady.met_fraction,
            "steady_goodput_per_s": steady.goodput_per_s,
            "flood_statuses": {str(k): v for k, v in flood.status_counts.items()},
            "steady_statuses": {str(k): v for k, v in steady.status_counts.items()},
            "steady_p99_ms": steady.p99_ms,
        }
        report["runs"][door] = figures
        print(
            f"door {door:3s}: steady {100 * steady.met_fraction:.2f}% within SLO (goal ≥ 99%), p99 "
            f"{steady.p99_ms:.1f} ms; flood goodput {flood.goodput_per_s:.0f}/s = "
            f"{100 * figures['flood_goodput_share_of_fair_share']:.0f}% of its fair share (goal ≥ 90%)"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"isolation-{args.model}-{args.protocol}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}")


def pair_repository(model: str) -> Path:
    """Two copies of one example model under the names ``flood`` and ``steady``."""
    built = RESULTS / "built"
    build_examples(built, only=(model,))
    pair = RESULTS / f"repository-{model}"
    for name in (FLOOD, STEADY):
        target = pair / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(built / model, target, ignore=shutil.ignore_patterns("*.stamp.json"))
        config = target / "config.pbtxt"
        config.write_text(config.read_text().replace(f'name: "{model}"', f'name: "{name}"'))
    return pair


def config(
    args: argparse.Namespace, slo_ms: float, rates: dict[str, float], duration_s: float, url: str = ""
) -> BenchConfig:
    encoding = args.encoding if args.protocol == "http" else "binary"
    return BenchConfig(
        models=tuple(ModelLoad(name, rate, slo_ms, encoding=encoding) for name, rate in rates.items()),
        url=url or "http://127.0.0.1:0",
        grpc_url=url or "127.0.0.1:0",
        protocol=args.protocol,
        duration_s=duration_s,
        warmup_s=2.0,
        seed=SEED,
        max_connections=1000,
    )


if __name__ == "__main__":
    main()

"""Overload of the server itself: squishy with its front door on and off, at 1×, 1.5× and 2× the max rate.

    .venv/bin/python benchmarks/bench_overload.py [--model double] [--protocol http|grpc] [--duration 20]

The reference is the max rate with the door **off** (highest rate with ≥ 99% of requests within the
SLO, as the client sees it), so a cautious door cannot lower its own bar. Steps, all on this machine,
in one run, each server fresh (``squishy serve`` on a repository of the one model, ONNX Runtime):

1. the load generator's own ceiling against a trivial server (``squishy.bench.ceiling``): offered
   rates are capped below it, and a cap that binds is printed;
2. the max rate with the door off, then with it on (ratio: goal ≥ 97%);
3. at 1×, 1.5× and 2× the door-off max, open loop, Poisson, for ``--duration`` s each, door on and off:
   goodput within the SLO as the client's clock sees it, p99 of successful replies, p99 of the reply
   time of rejections (503), every status, whether every request got exactly one reply, and the
   server's RSS (sampled every second: first and last, as a ratio).

Tensors go as JSON (``--encoding binary`` for the binary extension), over up to 1,000 keep-alive
connections, so the client does not cap concurrency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from squishy.bench import BenchConfig, ModelLoad, SearchSettings, run, search
from squishy.bench.ceiling import measure_ceiling
from squishy.bench.launch import ServerProcess, start_squishy
from squishy.bench.records import NO_REPLY, STATUS_OK
from squishy.examples import build_examples
from squishy.runtime.repository import ModelRepository

RESULTS = Path("results/overload")
FACTORS = (1.0, 1.5, 2.0)
# Offer at most this share of the generator's own ceiling: nearer it, the generator is measured.
CEILING_SHARE = 0.9
SEED = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="double", help="example model to serve (default: double, y = 2x)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--encoding", choices=("json", "binary"), default="json")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per overload step")
    parser.add_argument("--search-duration", type=float, default=10.0, help="seconds per search step")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    repository = RESULTS / "repository" / args.model
    build_examples(repository, only=(args.model,))
    slo_ms = ModelRepository(repository).load(args.model)[0].slo_ms
    report: dict[str, Any] = {"model": args.model, "slo_ms": slo_ms, "protocol": args.protocol, "date": _today()}

    found, server_share = measure_ceiling(args.protocol, slo_ms=slo_ms, duration_s=5.0)
    ceiling = found.rate_per_s
    report["generator_ceiling_per_s"] = ceiling
    print(f"generator ceiling ({args.protocol}, trivial server): {ceiling:.0f} req/s (server CPU {server_share:.2f})")

    maxima = {}
    for door in ("off", "on"):
        found = search(
            _config(args, slo_ms, 200.0, args.search_duration),
            SearchSettings(tolerance=0.03, cooldown_s=0.0, max_rate_per_s=CEILING_SHARE * ceiling),
            isolate=True,
            fresh_server=_fresh(repository, door, args.protocol),
        )
        maxima[door] = found.rate_per_s
        print(f"max rate at ≥ 99% within {slo_ms:g} ms, door {door}: {found.rate_per_s:.0f} req/s")
    report["max_rate_per_s"] = maxima
    ratio = maxima["on"] / maxima["off"] if maxima["off"] else math.nan
    print(f"door on ÷ door off: {ratio:.3f}")

    report["steps"] = []
    for factor in FACTORS:
        offered = factor * maxima["off"]
        capped = min(offered, CEILING_SHARE * ceiling)
        if capped < offered:
            print(f"  {factor:g}×: {offered:.0f} req/s capped at {capped:.0f} (90% of the generator's ceiling)")
        for door in ("on", "off"):
            step = overload_step(args, repository, door, slo_ms, capped, maxima["off"])
            step.update({"factor": factor, "door": door})
            report["steps"].append(step)
            print(
                f"  {factor:g}× door {door:3s}: offered {capped:6.0f}/s, goodput {step['goodput_per_s']:6.0f}/s "
                f"({100 * step['goodput_share_of_max']:.0f}% of the door-off max), p99 ok "
                f"{step['p99_ok_ms']:.1f} ms, p99 rejected {step['p99_rejected_ms']:.1f} ms, "
                f"statuses {step['statuses']}, one reply each: {step['one_reply_each']}, "
                f"RSS last/first {step['rss_ratio']:.3f}"
            )
    (RESULTS / f"overload-{args.model}-{args.protocol}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {RESULTS / f'overload-{args.model}-{args.protocol}.json'}")


def _config(args: argparse.Namespace, slo_ms: float, rate: float, duration_s: float, url: str = "") -> BenchConfig:
    load = ModelLoad(args.model, rate, slo_ms, encoding=args.encoding if args.protocol == "http" else "binary")
    return BenchConfig(
        models=(load,),
        url=url or "http://127.0.0.1:0",
        grpc_url=url or "127.0.0.1:0",
        protocol=args.protocol,
        duration_s=duration_s,
        warmup_s=2.0,
        seed=SEED,
        max_connections=1000,
    )


def _fresh(repository: Path, door: str, protocol: str):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        with start_squishy(repository, ["--executor", "onnxruntime", "--door", door]) as server:
            yield server.http_url if protocol == "http" else server.grpc_url

    return fresh_server


def overload_step(
    args: argparse.Namespace, repository: Path, door: str, slo_ms: float, rate: float, reference: float
) -> dict[str, Any]:
    with start_squishy(repository, ["--executor", "onnxruntime", "--door", door]) as server:
        url = server.http_url if args.protocol == "http" else server.grpc_url
        with _rss_sampler(server) as rss:
            result = run(_config(args, slo_ms, rate, args.duration, url), isolate=True)
    log = result.log
    measured = log.scheduled_s >= 2.0
    latency = log.latency_ms[measured]
    status = log.status[measured]
    met = log.met_slo([slo_ms])[measured]
    ok = latency[status == STATUS_OK]
    rejected = latency[status == 503]
    statuses = {int(s): int(n) for s, n in zip(*np.unique(status, return_counts=True), strict=True)}
    goodput = float(met.sum()) / args.duration
    return {
        "offered_per_s": rate,
        "goodput_per_s": goodput,
        "goodput_share_of_max": goodput / reference if reference else math.nan,
        "p99_ok_ms": float(np.percentile(ok, 99)) if len(ok) else math.nan,
        "p99_rejected_ms": float(np.percentile(rejected, 99)) if len(rejected) else math.nan,
        "statuses": statuses,
        "one_reply_each": NO_REPLY not in statuses,
        "rss_mb": rss,
        "rss_ratio": rss[-1] / rss[0] if len(rss) > 1 else math.nan,
    }


@contextlib.contextmanager
def _rss_sampler(server: ServerProcess) -> Iterator[list[float]]:
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append(int(line.split()[1]) / 1024.0)
            stop.wait(1.0)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def _today() -> str:
    return time.strftime("%Y-%m-%d")


if __name__ == "__main__":
    sys.exit(main())

"""squishy serve on this machine: the serving path's added latency, and goodput against the physical limit.

1. **Added latency.** ``squishy serve --executor null-zero`` (the executor does no work) under light
   Poisson load, over HTTP with binary tensors and over gRPC; beside it, in the same run, a trivial server
   that answers the same requests with a canned reply (the transport and the load generator's own cost).
   Added latency = squishy's end-to-end latency minus the executor's time (zero here); the difference to
   the trivial server is what squishy's Python serving path costs on top of the transport.
2. **Goodput at the SLO vs the physical limit.** One model (``resnet18-half``, SLO 200 ms) served on all
   slots with ONNX Runtime; the highest Poisson rate at which ≥ 99% of requests meet the SLO (search),
   against N_slots × max over b with 2ℓ(b) ≤ SLO of b/ℓ(b), ℓ measured per slot by squishy's profiler.
   The load generator shares the 2 cores with the server: its CPU share is printed beside the figure.

    .venv/bin/python benchmarks/bench_serving.py [--part overhead|goodput|all] [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from squishy.bench import BenchConfig, ModelLoad, RequestLog, SearchSettings, run, search
from squishy.bench.ceiling import MODEL as TRIVIAL_MODEL
from squishy.bench.ceiling import TrivialServer
from squishy.bench.launch import start_squishy
from squishy.examples import build_examples

OVERHEAD_RATE_PER_S = 100.0
TRITONCLIENT_REQUESTS = 2000
GOODPUT_MODEL = "resnet18-half"
SLOTS = 2


def tritonclient_latencies_ms(protocol: str, url: str, requests: int) -> list[float]:
    """Serial requests from tritonclient's own synchronous client (what users call), binary tensors."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url)
    tensor = module.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    outputs = [module.InferRequestedOutput("label")]
    latencies = []
    for index in range(requests + 100):
        start = time.perf_counter()
        client.infer("digits", [tensor], outputs=outputs)
        if index >= 100:  # the first hundred warm the connection and the server's caches
            latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies


def overhead(duration_s: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as directory:
        repository = Path(directory)
        build_examples(repository, only=("digits",))
        with start_squishy(repository, ["--executor", "null-zero", "--log-level", "warning"]) as server:
            with multiprocessing.get_context("spawn").Pool(1) as pool:  # the client in its own process
                for protocol, url in (("http", f"127.0.0.1:{server.http_port}"), ("grpc", server.grpc_url)):
                    latencies = pool.apply(tritonclient_latencies_ms, (protocol, url, TRITONCLIENT_REQUESTS))
                    rows.append(
                        {
                            "client": "tritonclient, serial",
                            "protocol": protocol,
                            "squishy_p50_ms": float(np.percentile(latencies, 50)),
                            "squishy_p99_ms": float(np.percentile(latencies, 99)),
                            "requests": len(latencies),
                        }
                    )
            for protocol in ("http", "grpc"):
                squishy = run(
                    BenchConfig(
                        models=(ModelLoad("digits", OVERHEAD_RATE_PER_S, slo_ms=20.0),),
                        protocol=protocol,
                        url=server.http_url,
                        grpc_url=server.grpc_url,
                        duration_s=duration_s,
                        warmup_s=2.0,
                        seed=1,
                    ),
                    isolate=True,
                )
                with TrivialServer(protocol) as trivial:
                    floor = run(
                        BenchConfig(
                            models=(ModelLoad(TRIVIAL_MODEL, OVERHEAD_RATE_PER_S, slo_ms=20.0),),
                            protocol=protocol,
                            url=f"http://127.0.0.1:{trivial.port}",
                            grpc_url=f"127.0.0.1:{trivial.port}",
                            duration_s=duration_s,
                            warmup_s=2.0,
                            seed=1,
                        ),
                        isolate=True,
                    )
                served, canned = wire_latency_ms(squishy.log), wire_latency_ms(floor.log)
                rows.append(
                    {
                        "client": f"open loop, {OVERHEAD_RATE_PER_S:g} req/s",
                        "protocol": protocol,
                        "squishy_p50_ms": float(np.percentile(served, 50)),
                        "squishy_p99_ms": float(np.percentile(served, 99)),
                        "trivial_p50_ms": float(np.percentile(canned, 50)),
                        "trivial_p99_ms": float(np.percentile(canned, 99)),
                        "added_over_trivial_p50_ms": float(np.percentile(served, 50) - np.percentile(canned, 50)),
                        "squishy_bad_rate": squishy.overall.bad_rate,
                        "requests": len(served),
                        "generator_cpu_share": squishy.generator.cpu_share,
                    }
                )
    return rows


def wire_latency_ms(log: RequestLog) -> np.ndarray:
    """Reply minus *send* time of every answered request: the server's path plus the transport.

    (The generator's own send lag, from its 1 ms timer, is left out: it is not the server's.)
    """
    answered = log.status == 200
    return (log.reply_s[answered] - log.send_s[answered]) * 1000.0


def physical_limit(batch_ms: dict[int, float], slo_ms: float, slots: int) -> tuple[float, int]:
    """N_slots × max over b with 2ℓ(b) ≤ SLO of b/ℓ(b) (requests/s), and that b."""
    best, best_batch = 0.0, 0
    for batch, latency in batch_ms.items():
        if 2 * latency <= slo_ms and 1000.0 * batch / latency > best:
            best, best_batch = 1000.0 * batch / latency, batch
    return slots * best, best_batch


def goodput(duration_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as directory:
        repository = Path(directory)
        build_examples(repository, only=(GOODPUT_MODEL,))
        with start_squishy(repository, ["--slots", str(SLOTS), "--log-level", "warning"]) as server:
            # ℓ per slot as the server measured it: with every slot running at once.
            cache = repository / GOODPUT_MODEL / "1" / f"cpu-1tx{SLOTS}.profile-cache.json"
            # The raw measurement, uncleaned: the limit is what the hardware did, not what the plan assumes.
            raw = {int(b): v for b, v in json.loads(cache.read_text())["batch_ms"].items()}
            slo_ms = 200.0
            limit, batch = physical_limit(raw, slo_ms, SLOTS)
            config = BenchConfig(
                models=(ModelLoad(GOODPUT_MODEL, limit * 0.7, slo_ms=slo_ms),),
                url=server.http_url,
                duration_s=duration_s,
                warmup_s=3.0,
                seed=2,
            )
            cpu_before, wall_before = server.cpu_s(), time.perf_counter()
            found = search(
                config,
                SearchSettings(tolerance=0.03, cooldown_s=2.0, start_rate_per_s=limit * 0.7),
                isolate=True,
                on_step=lambda step: print(
                    f"  {step.phase} {step.rate_per_s:.1f} req/s: {'pass' if step.passed else 'fail'}, "
                    f"{100 * step.result.overall.met_fraction:.2f}% met, late {step.result.overall.late}, "
                    f"dropped {step.result.overall.dropped}{', cut short' if step.result.cut_short else ''}",
                    file=sys.stderr,
                ),
            )
            server_share = (server.cpu_s() - cpu_before) / (time.perf_counter() - wall_before)
    best = found.best
    return {
        "model": GOODPUT_MODEL,
        "slo_ms": slo_ms,
        "slots": SLOTS,
        "latency_per_batch_ms": {str(b): round(v, 3) for b, v in sorted(raw.items())},
        "physical_limit_per_s": limit,
        "limit_batch": batch,
        "goodput_at_99_per_s": found.rate_per_s,
        "confirmed": found.confirmed,
        "ratio": found.rate_per_s / limit if limit else float("nan"),
        "p99_ms": best.overall.p99_ms if best else float("nan"),
        "generator_cpu_share": best.generator.cpu_share if best else float("nan"),
        "server_cpu_share_of_two_cores": server_share / 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("overhead", "goodput", "all"), default="all")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds measured per run (shorter steps hang on single hiccups)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, object] = {}
    if args.part in ("overhead", "all"):
        rows = overhead(args.duration)
        results["overhead"] = rows
        print("== added latency: null executor with zero work, light load (client send to reply)")
        print(f"{'client':<26} {'protocol':<9} {'squishy p50':>12} {'p99':>8} {'trivial p50':>12} {'p99':>8}")
        for row in rows:
            trivial = (
                f"{row['trivial_p50_ms']:>10.3f}ms {row['trivial_p99_ms']:>6.2f}ms" if "trivial_p50_ms" in row else ""
            )
            print(
                f"{row['client']:<26} {row['protocol']:<9} {row['squishy_p50_ms']:>10.3f}ms "
                f"{row['squishy_p99_ms']:>6.2f}ms {trivial}"
            )
        print(
            "(squishy's executor time is zero here, so its end-to-end latency is the serving path's added "
            "latency; goal: p50 under 1 ms)"
        )
    if args.part in ("goodput", "all"):
        row = goodput(args.duration)
        results["goodput"] = row
        print(f"\n== goodput at 99% within SLO, {row['model']} on {row['slots']} slots, SLO {row['slo_ms']:g} ms")
        print(
            f"physical limit: {row['physical_limit_per_s']:.1f} req/s (batch {row['limit_batch']}, ℓ per slot "
            f"{row['latency_per_batch_ms']})"
        )
        status = "confirmed" if row["confirmed"] else "NOT confirmed"
        print(
            f"squishy: {row['goodput_at_99_per_s']:.1f} req/s ({status}) = {100 * row['ratio']:.1f}% of the limit "
            f"(goal ≥ 85%), p99 {row['p99_ms']:.1f} ms"
        )
        print(
            f"load generator: {100 * row['generator_cpu_share']:.0f}% of one core; server: "
            f"{100 * row['server_cpu_share_of_two_cores']:.0f}% of both cores"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()

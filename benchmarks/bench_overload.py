"""Overload of the server itself: squishy with its front door on and off, at 1×, 1.5× and 2× the max rate.

    .venv/bin/python benchmarks/bench_overload.py [--model double] [--protocol http|grpc] [--duration 20]
        [--systems squishy,triton,mlserver,litserve,ray]

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

Tensors go as JSON (``--encoding binary`` for the binary extension), over up to 6,000 keep-alive
connections (6,000), so the client does not cap concurrency.

Peers, in the same run and measured the same way (``--systems``; each in its own venv made by
``python benchmarks/peers/setup.py``, and skipped with a note when its venv is missing or broken),
each serving ``double`` (input ``x`` FP32 [-1, 4], output ``y`` = 2·x) with OIP JSON over REST:

- ``triton``: Triton Inference Server 2.51 itself (PyTriton's ``tritonserver``, CPU only): its C++
  HTTP front end and dynamic batcher, the batch run by a numpy callable (``peers/triton_server.py``);
- ``mlserver``: MLServer, ``parallel_workers: 0``, adaptive batching, a custom ``MLModel`` in numpy
  (``peers/mlserver_server.py``);
- ``litserve``: LitServe, a ``LitAPI`` that decodes and encodes OIP JSON itself, 1 inference worker,
  1 API server, ZeroMQ queue, batching (``peers/litserve_server.py``);
- ``ray``: Ray Serve (``peers/ray_server.py``: squishy's codec and ONNX Runtime executor in the
  replica, ``@serve.batch``), 2 replicas of 1 CPU, ``max_ongoing_requests`` 1000, the throughput flags
  of Ray's performance guide (``bench_peers.RAY_ENVIRONMENT``).

Every peer batches at most ``--peer-max-batch`` requests (default 64, the model's ``max_batch_size``)
and waits at most ``--peer-batch-wait-ms`` (default 2 ms) for a batch to fill. For each: its own max
rate (the door-off search: ≥ 99% within the SLO by the client's clock, a fresh server per step), then
1×, 1.5× and 2× of it, with the same columns as squishy (memory summed over the peer's process tree).
Printed at the end: squishy's door-off max ÷ the best peer's max (the per-request overhead ratio).
Peers need ``--model double``, ``--protocol http`` and ``--encoding json``; otherwise they are skipped.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench_peers import RAY_ENVIRONMENT
from peers import procs, rules
from peers import setup as peer_venvs
from squishy.bench import BenchConfig, ModelLoad, RunResult, SearchSettings, run, search
from squishy.bench.ceiling import measure_ceiling
from squishy.bench.launch import start_squishy
from squishy.bench.records import NO_REPLY, STATUS_OK
from squishy.examples import build_examples
from squishy.runtime.repository import ModelRepository

RESULTS = Path("results/overload")
# Offer at most this share of the generator's own ceiling: nearer it, the generator is measured.
CEILING_SHARE = 0.9
SEED = 5
# Enough that the client never caps concurrency: at 2x a trivial model's max rate a server that queues
# 100 ms holds over a thousand requests; with fewer connections the queue would form in the generator,
# where no server can see it (and the peak is reported per step, to show the cap did not bind).
MAX_CONNECTIONS = 6000
BENCHMARKS = Path(__file__).resolve().parent
PEERS = ("triton", "mlserver", "litserve", "ray")
SYSTEMS = ("squishy", *PEERS)
CORES = 2  # Ray replicas of 1 CPU each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="double", help="example model to serve (default: double, y = 2x)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--encoding", choices=("json", "binary"), default="json")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per overload step")
    parser.add_argument("--search-duration", type=float, default=10.0, help="seconds per search step")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)} (default: all)"
    )
    parser.add_argument(
        "--ceiling", type=float, help="the generator's ceiling in req/s, if known: skips measuring it (smoke runs)"
    )
    parser.add_argument("--factors", default="1,1.5,2", help="overload steps, as multiples of each max rate")
    parser.add_argument("--search-steps", type=int, default=20, help="most scan + bisection steps per search")
    parser.add_argument("--confirm-attempts", type=int, default=3, help="confirmation runs per search, at most")
    parser.add_argument("--peer-max-batch", type=int, default=64, help="largest batch every peer forms")
    parser.add_argument("--peer-batch-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill")
    parser.add_argument(
        "--check-peers", action="store_true", help="only start each peer, check y = 2x on a few requests, stop it"
    )
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if bad := [s for s in systems if s not in SYSTEMS]:
        parser.error(f"unknown system {', '.join(bad)}: choose from {', '.join(SYSTEMS)}")
    factors = tuple(float(f) for f in args.factors.split(","))
    peers = usable_peers(args, [s for s in systems if s != "squishy"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    repository = RESULTS / "repository" / args.model
    build_examples(repository, only=(args.model,))
    if args.check_peers:
        if not peers:
            print("no peer to check")
        sys.exit(0 if all([check_peer(args, peer, repository) for peer in peers]) else 1)
    slo_ms = ModelRepository(repository).load(args.model)[0].slo_ms
    report: dict[str, Any] = {
        "model": args.model,
        "slo_ms": slo_ms,
        "protocol": args.protocol,
        "encoding": args.encoding,
        "date": _today(),
        "systems": (["squishy"] if "squishy" in systems else []) + peers,
    }

    if args.ceiling:
        ceiling = args.ceiling
        print(f"generator ceiling ({args.protocol}): {ceiling:.0f} req/s as given (--ceiling), not measured")
    else:
        found, server_share = measure_ceiling(args.protocol, slo_ms=slo_ms, duration_s=5.0)
        ceiling = found.rate_per_s
        print(
            f"generator ceiling ({args.protocol}, trivial server): {ceiling:.0f} req/s (server CPU {server_share:.2f})"
        )
    report["generator_ceiling_per_s"] = ceiling
    report["generator_ceiling_measured"] = not args.ceiling

    maxima: dict[str, float] = {}
    if "squishy" in systems:
        for door in ("off", "on"):
            found = search(
                _config(args, slo_ms, 200.0, args.search_duration),
                _search_settings(args, ceiling),
                isolate=True,
                fresh_server=_fresh(repository, door, args.protocol),
            )
            maxima[door] = found.rate_per_s
            print(f"max rate at ≥ 99% within {slo_ms:g} ms, door {door}: {found.rate_per_s:.0f} req/s")
        report["max_rate_per_s"] = maxima
        ratio = maxima["on"] / maxima["off"] if maxima["off"] else math.nan
        print(f"door on ÷ door off: {ratio:.3f}")

        report["steps"] = []
        for factor in factors:
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
                    f"p99 errors {step['p99_error_ms']:.1f} ms, "
                    f"statuses {step['statuses']}, one reply each: {step['one_reply_each']}, "
                    f"RSS last/first {step['rss_ratio']:.3f}, peak connections {step['peak_connections']}"
                )

    report["peers"] = {}
    for peer in peers:
        try:
            report["peers"][peer] = measure_peer(args, peer, repository, slo_ms, ceiling, factors)
        except Exception as exc:  # a peer that breaks here is reported, not fatal to the run
            print(f"{peer}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            report["peers"][peer] = {"failed": f"{type(exc).__name__}: {exc}"}
    peer_maxima = {p: r["max_rate_per_s"] for p, r in report["peers"].items() if "max_rate_per_s" in r}
    if "off" in maxima and peer_maxima:
        best = max(peer_maxima, key=lambda p: peer_maxima[p])
        overhead = maxima["off"] / peer_maxima[best] if peer_maxima[best] else math.inf
        report["overhead_ratio"] = {"squishy_door_off_per_s": maxima["off"], "best_peer": best, "ratio": overhead}
        print(
            f"overhead ratio: squishy door-off max {maxima['off']:.0f} req/s ÷ best peer ({best}) "
            f"{peer_maxima[best]:.0f} req/s = {overhead:.2f}  (maxima: "
            + ", ".join(f"{p} {r:.0f}" for p, r in peer_maxima.items())
            + ")"
        )
    elif peers:
        print("overhead ratio: needs squishy's door-off max and a peer's max in the same run (--systems)")
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
        max_connections=MAX_CONNECTIONS,
    )


def _fresh(repository: Path, door: str, protocol: str):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        with start_squishy(repository, ["--executor", "onnxruntime", "--door", door]) as server:
            yield server.http_url if protocol == "http" else server.grpc_url

    return fresh_server


def _search_settings(args: argparse.Namespace, ceiling: float) -> SearchSettings:
    return SearchSettings(
        tolerance=0.03,
        cooldown_s=0.0,
        max_rate_per_s=CEILING_SHARE * ceiling,
        max_steps=args.search_steps,
        confirm_attempts=args.confirm_attempts,
    )


def overload_step(
    args: argparse.Namespace, repository: Path, door: str, slo_ms: float, rate: float, reference: float
) -> dict[str, Any]:
    with start_squishy(repository, ["--executor", "onnxruntime", "--door", door]) as server:
        url = server.http_url if args.protocol == "http" else server.grpc_url
        with _memory_sampler(server.process.pid) as memory:
            result = run(_config(args, slo_ms, rate, args.duration, url), isolate=True)
    return step_figures(result, slo_ms, rate, reference, args.duration, memory)


def step_figures(
    result: RunResult, slo_ms: float, rate: float, reference: float, duration_s: float, memory: dict[str, list[float]]
) -> dict[str, Any]:
    """The columns of one overload step, every system alike (the first 2 s of arrivals are warm-up)."""
    log = result.log
    measured = log.scheduled_s >= 2.0
    latency = log.latency_ms[measured]
    status = log.status[measured]
    met = log.met_slo([slo_ms])[measured]
    ok = latency[status == STATUS_OK]
    rejected = latency[status == 503]
    # Every reply that is not a 200 (503s included; no-replies and connection errors have no time).
    errors = latency[(status != STATUS_OK) & (status >= 0)]
    statuses = {int(s): int(n) for s, n in zip(*np.unique(status, return_counts=True), strict=True)}
    goodput = float(met.sum()) / duration_s
    rss = memory["rss_mb"]
    return {
        "offered_per_s": rate,
        "goodput_per_s": goodput,
        "goodput_share_of_max": goodput / reference if reference else math.nan,
        "p99_ok_ms": float(np.percentile(ok, 99)) if len(ok) else math.nan,
        "p99_rejected_ms": float(np.percentile(rejected, 99)) if len(rejected) else math.nan,
        "p99_error_ms": float(np.percentile(errors, 99)) if len(errors) else math.nan,
        "statuses": statuses,
        "one_reply_each": NO_REPLY not in statuses,
        "peak_connections": result.peak_connections,
        "connections_capped": result.peak_connections >= result.config.max_connections,
        "rss_mb": rss,
        "pss_mb": memory["pss_mb"],
        "rss_ratio": rss[-1] / rss[0] if len(rss) > 1 else math.nan,
    }


@contextlib.contextmanager
def _memory_sampler(root_pid: int) -> Iterator[dict[str, list[float]]]:
    """RSS and PSS (MB) every second, summed over the server's process tree (one process for squishy;
    RSS counts shared pages once per process, so it overstates many-process servers: PSS does not)."""
    samples: dict[str, list[float]] = {"rss_mb": [], "pss_mb": []}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = procs.memory_bytes(procs.descendants(root_pid))
            if rss:
                samples["rss_mb"].append(rss / 2**20)
                samples["pss_mb"].append(pss / 2**20)
            stop.wait(1.0)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------------------ peers


def usable_peers(args: argparse.Namespace, requested: list[str]) -> list[str]:
    """The requested peers that can run here and now; each left out is said why."""
    if not requested:
        return []
    if (args.model, args.protocol, args.encoding) != ("double", "http", "json"):
        print(
            f"note: peers ({', '.join(requested)}) serve only model double with JSON over HTTP: skipped "
            f"for --model {args.model} --protocol {args.protocol} --encoding {args.encoding}"
        )
        return []
    usable = []
    for peer in requested:
        problem = peer_venvs.check(peer_venvs.PEERS[peer])
        if problem is None:
            usable.append(peer)
        else:
            print(f"note: {peer} skipped, not installed here ({problem}): python benchmarks/peers/setup.py {peer}")
    return usable


@dataclass(frozen=True)
class PeerCommand:
    command: list[str]
    env: dict[str, str]
    ready: list[str]
    description: dict[str, Any]


def peer_command(args: argparse.Namespace, peer: str, repository: Path, port: int, workdir: Path) -> PeerCommand:
    """How ``peer`` is started on ``port`` (its venv's python, its server module, its settings)."""
    python = str(peer_venvs.venv_python(peer))
    batching = ["--max-batch-size", str(args.peer_max_batch), "--batch-wait-ms", str(args.peer_batch_wait_ms)]
    settings: dict[str, Any] = {"max_batch_size": args.peer_max_batch, "batch_wait_ms": args.peer_batch_wait_ms}
    model_ready = f"/v2/models/{args.model}/ready"
    if peer == "triton":
        command = [python, str(BENCHMARKS / "peers" / "triton_server.py"), "--port", str(port), *batching]
        command += ["--instances", "1"]
        env = peer_venvs.triton_environment(python)
        return PeerCommand(command, env, ["/v2/health/ready", model_ready], {**settings, "instances": 1, **env})
    if peer == "mlserver":
        folder = workdir / f"mlserver-{port}"
        command = [python, str(BENCHMARKS / "peers" / "mlserver_server.py"), "--port", str(port), *batching]
        command += ["--folder", str(folder)]
        return PeerCommand(command, {}, ["/v2/health/ready", model_ready], {**settings, "parallel_workers": 0})
    if peer == "litserve":
        command = [python, str(BENCHMARKS / "peers" / "litserve_server.py"), "--port", str(port), *batching]
        command += ["--workers", "1", "--api-servers", "1"]
        layout = {"workers_per_device": 1, "num_api_servers": 1, "fast_queue": True}
        return PeerCommand(command, {}, ["/health", model_ready], {**settings, **layout})
    if peer == "ray":
        plan = rules.RayModelPlan(
            model=args.model,
            slo_ms=ModelRepository(repository).load(args.model)[0].slo_ms,
            max_batch_size=args.peer_max_batch,
            batch_wait_timeout_s=args.peer_batch_wait_ms / 1000.0,
            batch_latency_ms=0.0,  # not from a profile here: the peers all batch alike
            overhead_ms=0.0,
            replicas=CORES,
            num_cpus=1.0,
        )
        plan_path = workdir / "ray-plan.json"
        plan_path.write_text(json.dumps({"generation": 0, "deployments": [plan.to_dict()]}, indent=2))
        command = [python, "-m", "peers.ray_server", "--repository", str(repository), "--port", str(port)]
        command += ["--plan", str(plan_path), "--cores", str(CORES)]
        env = {**RAY_ENVIRONMENT, "PYTHONPATH": str(BENCHMARKS)}
        return PeerCommand(command, env, [model_ready], {"deployment": plan.to_dict(), "environment": RAY_ENVIRONMENT})
    raise ValueError(f"unknown peer {peer!r}")


@contextlib.contextmanager
def start_peer(args: argparse.Namespace, peer: str, repository: Path) -> Iterator[procs.Server]:
    """Start ``peer`` on a free port in a session of its own, wait until it and the model are ready, and
    at the end stop it and everything it started (tritonserver's stub, Ray's raylet, LitServe's workers)."""
    workdir = RESULTS / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    spec = peer_command(args, peer, repository, port, workdir)
    log_path = workdir / f"{peer}-{port}.log"
    server = procs.Server(peer, spec.command, port=port, ready_paths=spec.ready, env=spec.env, log_path=log_path)
    try:
        yield server
    finally:
        if stragglers := server.stop():
            print(f"  {peer}: ended {len(stragglers)} process(es) left after shutdown", file=sys.stderr)


def _fresh_peer(args: argparse.Namespace, peer: str, repository: Path):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        with start_peer(args, peer, repository) as server:
            yield server.url

    return fresh_server


def check_peer(args: argparse.Namespace, peer: str, repository: Path) -> bool:
    """Start ``peer``, send a few OIP JSON requests (batches of 1 to 3 rows) with httpx, check y = 2x."""
    import httpx

    rng = np.random.default_rng(SEED)
    started = time.monotonic()
    try:
        with start_peer(args, peer, repository) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            start_s = time.monotonic() - started
            metadata = client.get(f"/v2/models/{args.model}", follow_redirects=True).json()
            for n, rows in enumerate((1, 2, 3, 1, 1)):
                x = rng.uniform(-10, 10, size=(rows, 4)).astype(np.float32)
                body = {"id": f"check-{n}", "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32"}]}
                body["inputs"][0]["data"] = x.ravel().tolist()
                reply = client.post(f"/v2/models/{args.model}/infer", json=body)
                reply.raise_for_status()
                out = reply.json()["outputs"][0]
                y = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
                if out["name"] != "y" or y.shape != x.shape or not np.array_equal(y, 2 * x):
                    raise AssertionError(f"request {n}: y != 2x: {out}")
    except Exception as exc:
        print(f"{peer}: check FAILED: {type(exc).__name__}: {exc}")
        return False
    print(f"{peer}: ready in {start_s:.1f} s, inputs {metadata.get('inputs')}, 5 requests with y = 2x: ok")
    return True


def measure_peer(
    args: argparse.Namespace, peer: str, repository: Path, slo_ms: float, ceiling: float, factors: tuple[float, ...]
) -> dict[str, Any]:
    """A peer as squishy with the door off: its max rate (fresh server per step), then the overload steps."""
    found = search(
        _config(args, slo_ms, 200.0, args.search_duration),
        _search_settings(args, ceiling),
        isolate=True,
        fresh_server=_fresh_peer(args, peer, repository),
    )
    maximum = found.rate_per_s
    print(f"{peer}: max rate at ≥ 99% within {slo_ms:g} ms: {maximum:.0f} req/s (confirmed: {found.confirmed})")
    report: dict[str, Any] = {
        "max_rate_per_s": maximum,
        "confirmed": found.confirmed,
        "server": peer_command(args, peer, repository, 0, RESULTS / "logs").description,
        "curve": found.to_dict()["curve"],
        "steps": [],
    }
    if maximum <= 0:
        print(f"  {peer}: no rate met the SLO, so no overload steps")
        return report
    for factor in factors:
        offered = factor * maximum
        capped = min(offered, CEILING_SHARE * ceiling)
        if capped < offered:
            print(f"  {peer} {factor:g}×: {offered:.0f} req/s capped at {capped:.0f} (90% of the generator's ceiling)")
        with start_peer(args, peer, repository) as server, _memory_sampler(server.process.pid) as memory:
            result = run(_config(args, slo_ms, capped, args.duration, server.url), isolate=True)
        step = step_figures(result, slo_ms, capped, maximum, args.duration, memory)
        step["factor"] = factor
        report["steps"].append(step)
        print(
            f"  {peer} {factor:g}×: offered {capped:6.0f}/s, goodput {step['goodput_per_s']:6.0f}/s "
            f"({100 * step['goodput_share_of_max']:.0f}% of its max), p99 ok {step['p99_ok_ms']:.1f} ms, "
            f"p99 errors {step['p99_error_ms']:.1f} ms, statuses {step['statuses']}, "
            f"one reply each: {step['one_reply_each']}, RSS last/first {step['rss_ratio']:.3f}, "
            f"peak connections {step['peak_connections']}"
        )
    return report


def _today() -> str:
    return time.strftime("%Y-%m-%d")


if __name__ == "__main__":
    sys.exit(main())

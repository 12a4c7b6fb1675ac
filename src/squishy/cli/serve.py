"""``squishy serve --repository DIR``: serve a model repository over OIP REST, gRPC and Prometheus."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from squishy.cluster import slot_layout
from squishy.control.variants import CHOICE_LOAD_MARGIN
from squishy.errors import SquishyError
from squishy.frontend.access import MODEL_CONTROL_MODES, TOKEN_ENVIRONMENT, RepositoryControl
from squishy.frontend.door import DEFAULT_TARGET_MS, DoorConfig
from squishy.frontend.server import (
    DEFAULT_GRACE_S,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    FrontendServer,
)
from squishy.metrics import ServerMetrics
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.repository import DEFAULT_SLO_MS, ModelRepository
from squishy.runtime.watchdog import HangBound

# Kubernetes removes a terminating pod from its endpoints within a few seconds; Docker and systemd wait
# 10 s (90 s) before SIGKILL, so delay and grace together stay within the shortest of them.
DEFAULT_DRAIN_DELAY_S = 5.0
EXECUTORS = ("auto", "onnxruntime", "torch", "tvm", "null", "null-zero")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="serve a model repository (OIP REST + gRPC, Prometheus metrics)")
    parser.add_argument("--repository", required=True, help="model repository directory (Triton layout)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--slots", type=int, help="execution slots (backends); default: one per core")
    parser.add_argument("--threads-per-slot", type=int, help="intra-op threads per slot; default: cores / slots")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run each slot as an actor on this Ray cluster ('auto': the one `ray start` made here; "
        "host:port: its head); slots default to its CPUs / threads per slot (docs/deploy.md)",
    )
    parser.add_argument(
        "--ray-namespace",
        default="squishy",
        help="Ray namespace of the slots' actors: a restart on the same one takes over the running slots; "
        "two servers on one cluster need two (default: squishy)",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="auto (by model platform), onnxruntime, torch, tvm, null (sleeps the profiled latency), null-zero",
    )
    parser.add_argument("--epoch-s", type=float, default=10.0, help="re-plan at least this often (default 10 s)")
    parser.add_argument("--default-slo-ms", type=float, default=DEFAULT_SLO_MS, help="SLO of models that set none")
    parser.add_argument("--network-ms", type=float, default=1.0, help="margin taken off every SLO (default 1 ms)")
    parser.add_argument(
        "--variant-load-margin",
        type=float,
        default=CHOICE_LOAD_MARGIN,
        help=f"tasks' variants are chosen for the measured load times this (default {CHOICE_LOAD_MARGIN:g})",
    )
    parser.add_argument(
        "--query-split",
        choices=("dp", "even"),
        default="dp",
        help="how an ensemble's or application's SLO is split over its stages (default dp: query analysis)",
    )
    parser.add_argument(
        "--no-prefix-batching",
        action="store_true",
        help="serve models that declare a shared trunk (prefix_tensor) each on its own, trunk included",
    )
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted (MB)")
    parser.add_argument(
        "--no-strict-readiness", action="store_true", help="report ready while at least one model serves"
    )
    parser.add_argument(
        "--model-control",
        choices=MODEL_CONTROL_MODES,
        default="none",
        help="none (default, as Triton): serve the repository as started, refuse load/unload; "
        "explicit: allow the repository load/unload API",
    )
    parser.add_argument(
        "--control-token",
        help=f"with --model-control explicit: load/unload need 'Authorization: Bearer TOKEN' "
        f"(default: ${TOKEN_ENVIRONMENT} if set, else no token)",
    )
    parser.add_argument(
        "--door",
        choices=("on", "off"),
        default="on",
        help="shed requests at the front door when the server itself lags (default on; see docs/reliability.md)",
    )
    parser.add_argument(
        "--door-target-ms",
        type=float,
        default=DEFAULT_TARGET_MS,
        help=f"the wait before handling that counts as a standing queue (default {DEFAULT_TARGET_MS:g} ms)",
    )
    parser.add_argument(
        "--late-replies",
        action="store_true",
        help="deliver results that finish after their deadline (default: answer 503 at the deadline)",
    )
    parser.add_argument(
        "--hang-factor",
        type=float,
        default=HangBound.hang_factor,
        help="a batch running this many times its profiled time is hung: the model is made unavailable "
        f"(default {HangBound.hang_factor:g})",
    )
    parser.add_argument(
        "--hang-floor-ms",
        type=float,
        default=HangBound.hang_floor_ms,
        help=f"and never before it has run this long (default {HangBound.hang_floor_ms:g} ms)",
    )
    parser.add_argument(
        "--drain-delay-s",
        type=float,
        default=DEFAULT_DRAIN_DELAY_S,
        help="on SIGTERM, readiness turns false and the server keeps serving this long so that load "
        f"balancers move away, before it stops accepting (default {DEFAULT_DRAIN_DELAY_S:g}; SIGINT skips it)",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=DEFAULT_GRACE_S,
        help=f"then requests in flight have this long to finish (default {DEFAULT_GRACE_S:g})",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    control = repository_control(args)
    try:
        door = DoorConfig(enabled=args.door == "on", target_ms=args.door_target_ms)
    except ValueError as exc:
        raise SquishyError(f"--door-target-ms: {exc}") from None
    # Before minutes of loading and profiling: a port that is taken fails now, in one line.
    check_ports(
        args.host, {"--http-port": args.http_port, "--grpc-port": args.grpc_port, "--metrics-port": args.metrics_port}
    )
    repository = ModelRepository(args.repository, default_slo_ms=args.default_slo_ms)
    backends = _ray_backends(args) if args.ray else None
    config = ServingConfig(
        layout=backends.layout if backends is not None else slot_layout(args.slots, args.threads_per_slot),
        executor_factory=backends.executor if backends is not None else None,
        executor=args.executor,
        epoch_s=args.epoch_s,
        network_ms=args.network_ms,
        variant_load_margin=args.variant_load_margin,
        strict_readiness=not args.no_strict_readiness,
        profile_progress=sys.stderr.isatty(),
        answer_at_deadline=not args.late_replies,
        query_split=args.query_split,
        prefix_batching=not args.no_prefix_batching,
        hang=HangBound(args.hang_factor, args.hang_floor_ms),
    )
    import uvloop

    try:
        uvloop.run(_serve(args, repository, config, control, door))
    finally:
        if backends is not None:
            backends.close()
    return 0


def _ray_backends(args: argparse.Namespace) -> Any:
    try:
        from squishy.cluster.ray import RayBackends
    except ImportError as exc:
        raise SquishyError(f"--ray needs Ray ({exc.name or exc}): pip install 'squishy[ray]'") from None
    backends = RayBackends(
        args.ray, slots=args.slots, threads_per_slot=args.threads_per_slot, namespace=args.ray_namespace
    )
    print(
        f"squishy: {backends.layout.slots} slots of {backends.layout.threads_per_slot} thread(s) on the Ray "
        f"cluster at {args.ray}",
        file=sys.stderr,
        flush=True,
    )
    return backends


def repository_control(args: argparse.Namespace) -> RepositoryControl:
    token = args.control_token or os.environ.get(TOKEN_ENVIRONMENT) or None
    if token is not None and args.model_control != "explicit":
        raise SquishyError("a control token guards load/unload, which only --model-control explicit allows")
    return RepositoryControl(args.model_control, token)


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Raise, naming the option, when a port cannot be bound on ``host`` (0 picks a free one: not checked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for option, port in ports.items():
        if port == 0:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise SquishyError(
                    f"cannot listen on {host}:{port} ({option}): {exc.strerror or exc}; "
                    f"pick another with {option} N (0: any free port)"
                ) from None


async def _serve(
    args: argparse.Namespace,
    repository: ModelRepository,
    config: ServingConfig,
    control: RepositoryControl,
    door: DoorConfig,
) -> None:
    metrics = ServerMetrics()
    core = ServingCore(repository, config, metrics)
    stop = asyncio.Event()  # stop accepting now
    drain = asyncio.Event()  # turn unready, serve on for the drain delay, then stop
    loop = asyncio.get_running_loop()

    def on_term() -> None:
        (stop if drain.is_set() else drain).set()  # a second SIGTERM cuts the delay short

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    print(f"squishy: loading and profiling the models in {repository.root} ...", file=sys.stderr, flush=True)
    await core.start()
    server = FrontendServer(
        core,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        metrics=metrics,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        grace_s=args.grace_s,
        control=control,
        door=door,
    )
    try:
        ports = await server.start()
        _announce(core, args.host, ports.http, ports.grpc, ports.metrics, control)
        await _first(stop.wait(), drain.wait())
        if not stop.is_set():
            core.drain()
            print(
                f"squishy: SIGTERM: not ready; serving {args.drain_delay_s:g} s more while load balancers "
                f"move away, then finishing requests in flight (up to {args.grace_s:g} s)",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, args.drain_delay_s))
        print("squishy: shutting down", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
        await core.stop()


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _announce(
    core: ServingCore, host: str, http: int, grpc: int, metrics: int | None, control: RepositoryControl
) -> None:
    from squishy.cli.plan import render

    shown = "localhost" if host in ("0.0.0.0", "::") else host
    for state in core.repository_index():
        note = "" if state.state == "READY" else f"  ({state.reason})"
        print(f"  model {state.name} version {state.version or '-'}: {state.state}{note}", flush=True)
    if core.plan is not None:
        print(render(core.plan), flush=True)
        print(
            f"(rates are the capacity planned: {core.headroom:.3g}x the measured load, at least "
            f"{core.config.min_rate_per_s:g} req/s per model; idle slots also take short batches from busy "
            f"ones, and the plan is revised every {core.config.epoch_s:g} s as load is measured)",
            flush=True,
        )
    print(f"squishy: serving OIP REST on http://{shown}:{http}/v2, gRPC on {shown}:{grpc}", flush=True)
    if metrics is not None:
        print(f"squishy: Prometheus metrics on http://{shown}:{metrics}/metrics", flush=True)
    if control.mode == "none":
        print("squishy: repository control off (load/unload refused; --model-control explicit allows it)", flush=True)
    else:
        guard = "bearer token required" if control.token else "no token: anyone who reaches the port may use it"
        print(f"squishy: repository control on ({guard})", flush=True)
    if core.is_ready():
        print("squishy: ready (Ctrl-C to stop)", flush=True)
        return
    failed = [f"{s.name} ({s.reason or s.state})" for s in core.repository_index() if s.state != "READY"]
    print(
        f"squishy: serving, but NOT READY: /v2/health/ready answers 503 while a model asked for is not ready "
        f"({'; '.join(failed) or 'no model serves'}). Fix or remove it, or pass --no-strict-readiness "
        f"(ready while any model serves). (Ctrl-C to stop)",
        flush=True,
    )

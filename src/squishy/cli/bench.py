"""``squishy bench``: open-loop load against an OIP server; figures at the SLO, or the goodput search."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from squishy.arrivals import FORMS, Arrivals
from squishy.bench import BenchConfig, BenchError, ModelLoad, SearchSettings, prepare, run, search
from squishy.bench.config import InputSpec, parse_input_arg, parse_model_arg, parse_parameter_arg
from squishy.bench.report import environment, render_run, render_search, render_step


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="drive an OIP server with open-loop load and report latency, goodput and bad rate at an SLO",
        description="Open-loop load: requests are sent when due, whatever the replies; latency counts from the "
        "scheduled send time. With --search, find the highest rate at which 99% of requests meet the SLO: each "
        "step is a full run (--warmup, then --duration), a mix keeping its proportions. The search scans a grid "
        "of rates (pass/fail need not be monotone in the rate), bisects the highest passing bracket, confirms on "
        "the next seed, and prints the pass/fail curve of every step.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="REST endpoint (default: %(default)s)")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001", help="gRPC endpoint (default: %(default)s)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="default: %(default)s")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="M[:RATE[:SLO_MS]]",
        help="model to drive; repeat for a mix, each with its own rate (and SLO)",
    )
    parser.add_argument("--rate", type=float, help="requests/s for each model given without a rate")
    parser.add_argument("--slo-ms", type=float, help="latency SLO in ms for each model given without one")
    parser.add_argument(
        "--arrivals",
        default="poisson",
        help=f"{FORMS}; a FILE holds timestamps in s, one a line or a JSON list (default: %(default)s)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first (default: %(default)s)")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[M/]NAME=SHAPE[:DTYPE]",
        help="input shape (batch dimension included), e.g. x=1,3,224,224:FP32; needed for variable dimensions",
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="request parameter, e.g. timeout=50000"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="items per request (default: %(default)s)")
    parser.add_argument(
        "--encoding",
        choices=("binary", "json"),
        default="binary",
        help="REST tensors: binary extension (default) or JSON lists, as clients without the extension send",
    )
    parser.add_argument("--max-connections", type=int, default=1000, help="HTTP connections at most")
    parser.add_argument("--seed", type=int, default=0, help="arrival and input seed (default: %(default)s)")
    parser.add_argument("--search", action="store_true", help="search for the goodput at the SLO (99%% within SLO)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="search precision (default: %(default)s)")
    parser.add_argument("--max-rate", type=float, default=1e6, help="search ceiling in requests/s")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    parser.add_argument("--requests", action="store_true", help="with --json: include every request's record")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    arrivals = Arrivals.parse(args.arrivals)
    config, overrides = build_config(args, arrivals)
    prepared = prepare(config, overrides)
    progress = not args.no_progress
    document: dict[str, Any] = {"environment": environment()}
    if args.search:
        settings = SearchSettings(tolerance=args.tolerance, max_rate_per_s=args.max_rate)
        found = search(
            config,
            settings,
            prepared=prepared,
            progress=progress,
            on_step=lambda step: print(render_step(step), file=sys.stderr, flush=True),
        )
        print(render_search(found))
        document["search"] = found.to_dict()
        if args.requests and found.best is not None:
            document["search"]["best"] = found.best.to_dict(include_requests=True)
    else:
        result = run(config, prepared=prepared, progress=progress)
        print(render_run(result))
        document["run"] = result.to_dict(include_requests=args.requests)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(_finite(document), indent=2) + "\n")
        except OSError as exc:
            raise BenchError(f"cannot write {args.json}: {exc.strerror or exc}") from None
    return 0


def build_config(args: argparse.Namespace, arrivals: Arrivals) -> tuple[BenchConfig, dict[str, tuple[InputSpec, ...]]]:
    models = [parse_model_arg(text) for text in args.model]
    names = {name for name, _, _ in models}
    per_model: dict[str, list[InputSpec]] = {}
    for text in args.input:
        target, spec = parse_input_arg(text)
        if target is not None and target not in names:
            raise BenchError(f"--input {text}: '{target}' is not one of the models driven ({', '.join(sorted(names))})")
        per_model.setdefault(target or "", []).append(spec)
    parameters = dict(parse_parameter_arg(text) for text in args.param)
    loads = []
    for name, rate, slo_ms in models:
        rate = rate if rate is not None else args.rate
        if rate is None and arrivals.kind in ("trace", "replay"):
            rate = arrivals.trace_rate_per_s
        if rate is None:
            raise BenchError(f"no rate for model '{name}': give --rate or --model {name}:RATE")
        slo_ms = slo_ms if slo_ms is not None else args.slo_ms
        if slo_ms is None:
            raise BenchError(f"no SLO for model '{name}': give --slo-ms or --model {name}:RATE:SLO_MS")
        loads.append(
            ModelLoad(
                name,
                rate_per_s=rate,
                slo_ms=slo_ms,
                inputs=tuple(per_model.get(name, ())),
                parameters=parameters,
                batch_size=args.batch_size,
                encoding=args.encoding,
            )
        )
    config = BenchConfig(
        models=tuple(loads),
        url=args.url,
        protocol=args.protocol,
        grpc_url=args.grpc_url,
        arrivals=arrivals,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        max_connections=args.max_connections,
    )
    return config, {"": tuple(per_model.get("", ()))}


def _finite(value: Any) -> Any:
    """JSON has no NaN: figures that do not exist (no replies, no latency) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value

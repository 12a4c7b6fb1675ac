"""Query analysis against an even split: the max rate of a two-stage application at its SLO, served with
its SLO split by the DP (``--query-split dp``, squishy's default) and evenly (``--query-split even``).

    .venv/bin/python benchmarks/bench_queries.py [--fan-out 4] [--slo-ms 60] [--search-duration 8]

The application calls ``smallcnn`` (a cheap CNN, the "detector") once per request, then ``digits`` (an
MLP, the "recognizer") ``--fan-out`` times; both are example models, run by ONNX Runtime on 2 slots. For
each split, the highest rate at which ≥ 99% of the application's requests finish within its SLO, by the
client's clock (the search of ``squishy.bench``, a fresh server per step). Paper (Nexus): +13–55%.
The simulator does not run applications yet, so there is no twin prediction for this change.
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

RESULTS = Path("results/queries")

APPLICATION = """
import asyncio
import numpy as np

FAN_OUT = {fan_out}
CALLS = {{"smallcnn": {{"digits": {{}}}}}}

async def execute(inputs, call):
    await call("smallcnn", {{"image": inputs["image"][None]}})
    pixels = np.zeros((1, 64), np.float32)
    await asyncio.gather(*(call("digits", {{"pixels": pixels}}) for _ in range(FAN_OUT)))
    return {{"done": np.array([FAN_OUT], np.int32)}}
"""

CONFIG = """name: "pipeline"
platform: "squishy_application"
max_batch_size: 0
input [ {{ name: "image" data_type: TYPE_FP32 dims: [ 3, 64, 64 ] }} ]
output [ {{ name: "done" data_type: TYPE_INT32 dims: [ 1 ] }} ]
parameters {{ key: "slo_ms" value {{ string_value: "{slo_ms:g}" }} }}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fan-out", type=int, default=4, help="recognizer calls per request")
    parser.add_argument("--slo-ms", type=float, default=60.0, help="the application's end-to-end SLO")
    parser.add_argument("--search-duration", type=float, default=8.0, help="seconds per search step")
    args = parser.parse_args()

    repository = RESULTS / "repository"
    build_examples(repository, only=("smallcnn", "digits"))
    (repository / "pipeline" / "1").mkdir(parents=True, exist_ok=True)
    (repository / "pipeline" / "1" / "application.py").write_text(APPLICATION.format(fan_out=args.fan_out))
    (repository / "pipeline" / "config.pbtxt").write_text(CONFIG.format(slo_ms=args.slo_ms))
    report: dict[str, object] = {"date": date.today().isoformat(), "fan_out": args.fan_out, "slo_ms": args.slo_ms}
    maxima = {}
    for split in ("dp", "even"):
        found = search(
            BenchConfig(
                models=(ModelLoad("pipeline", 50.0, args.slo_ms),),
                url="http://127.0.0.1:0",
                duration_s=args.search_duration,
                warmup_s=3.0,  # the first epochs split the SLO and plan the stages
                seed=7,
            ),
            SearchSettings(tolerance=0.05, cooldown_s=0.0),
            isolate=True,
            fresh_server=fresh(repository, split),
        )
        maxima[split] = found.rate_per_s
        print(f"split {split:4s}: max rate at ≥ 99% within {args.slo_ms:g} ms: {found.rate_per_s:.0f} req/s")
    ratio = maxima["dp"] / maxima["even"] if maxima["even"] else float("inf")
    print(f"dp ÷ even: {ratio:.2f}")
    report.update(max_rate_per_s=maxima, ratio=ratio)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"queries-fanout{args.fan_out}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}")


def fresh(repository: Path, split: str):  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def fresh_server() -> Iterator[str]:
        arguments = ["--executor", "onnxruntime", "--query-split", split, "--epoch-s", "1"]
        with start_squishy(repository, arguments) as server:
            yield server.http_url

    return fresh_server


if __name__ == "__main__":
    main()

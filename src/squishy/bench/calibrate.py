"""Calibration: what one request costs the machine outside the executor, measured, per model.

The twin (``squishy.sim.twin``) predicts ``squishy serve`` on this machine from ℓ(b) (the profiler) and
these constants, each measured here by separate runs, never fitted to the runs it is checked against:
- the server's event loop (HTTP parsing, decoding, validation, routing, encoding and sending the reply)
  and its slot threads (gathering a batch's inputs, splitting its outputs), per request: the server runs
  with the ``null-zero`` executor (no model work at all) under fixed open-loop rates, and its threads'
  CPU time (``/proc/<pid>/task``) is divided by the requests served, after taking off what the same
  threads use idle;
- the load generator's CPU per request (its process time), from the same runs, as the slope between
  two rates (its dispatcher costs something per second even idle).
How the event loop's cost splits between the request and the reply is measured in isolation: decoding
the model's request and encoding its response with squishy's codec, many times; the rest of the event
loop's cost (HTTP, asyncio) is split evenly between the two.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from squishy.bench.config import BenchConfig, ModelLoad
from squishy.bench.launch import ServerProcess, start_squishy
from squishy.bench.run import prepare, run

DEFAULT_RATES_PER_S = (100.0, 400.0)
DEFAULT_DURATION_S = 8.0
IDLE_S = 3.0
CODEC_REPEATS = 300


@dataclass(frozen=True)
class ModelCosts:
    """CPU milliseconds per request of one model, on this machine."""

    frontend_ms: float  # event loop, request side (from the handler's start to queueing)
    reply_ms: float  # event loop, reply side
    slot_ms: float  # slot thread, outside the executor
    generator_send_ms: float
    generator_receive_ms: float
    runs: list[dict[str, float]] = field(default_factory=list)  # the raw figures behind them


@dataclass(frozen=True)
class Calibration:
    cores: int
    models: dict[str, ModelCosts]
    measured: str  # date and the command
    machine: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        models = {name: ModelCosts(**costs) for name, costs in data["models"].items()}
        return cls(int(data["cores"]), models, str(data.get("measured", "")), str(data.get("machine", "")))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.from_dict(json.loads(path.read_text()))


def calibrate(
    repository: Path,
    models: Sequence[str],
    *,
    rates_per_s: Sequence[float] = DEFAULT_RATES_PER_S,
    duration_s: float = DEFAULT_DURATION_S,
    seed: int = 101,
    progress: bool = False,
) -> Calibration:
    """Measure every model's costs against a ``null-zero`` server on this machine."""
    costs: dict[str, ModelCosts] = {}
    with start_squishy(repository, ["--executor", "null-zero"]) as server:
        idle = _idle_rates(server)
        for model in models:
            costs[model] = _calibrate_model(server, repository, model, idle, rates_per_s, duration_s, seed, progress)
    return Calibration(
        cores=len(os.sched_getaffinity(0)),
        models=costs,
        measured=time.strftime("%Y-%m-%d"),
        machine=_cpu_model(),
    )


def _idle_rates(server: ServerProcess) -> dict[str, float]:
    """CPU seconds per second each thread group uses with no traffic (control loop, timers)."""
    before = _threads(server)
    time.sleep(IDLE_S)
    after = _threads(server)
    return {name: (after[name] - before.get(name, 0.0)) / IDLE_S for name in after}


def _threads(server: ServerProcess) -> dict[str, float]:
    raw = server.thread_cpu_s()
    grouped = {"main": raw.get("main", 0.0), "slots": 0.0, "other": 0.0}
    for name, seconds in raw.items():
        if name.startswith("squishy-slot"):
            grouped["slots"] += seconds
        elif name != "main":
            grouped["other"] += seconds
    return grouped


def _served(server: ServerProcess, model: str) -> tuple[int, int]:
    """(requests answered successfully, batches executed) so far, from the statistics extension."""
    reply = httpx.get(f"{server.http_url}/v2/models/{model}/stats", timeout=10)
    stats = reply.json()["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"]), int(stats["execution_count"])


def _calibrate_model(
    server: ServerProcess,
    repository: Path,
    model: str,
    idle: dict[str, float],
    rates_per_s: Sequence[float],
    duration_s: float,
    seed: int,
    progress: bool,
) -> ModelCosts:
    runs: list[dict[str, float]] = []
    load = ModelLoad(model, rates_per_s[0], 10_000.0)
    config = BenchConfig(models=(load,), url=server.http_url, duration_s=duration_s, warmup_s=1.0, seed=seed)
    prepared = prepare(config)
    for rate in rates_per_s:
        step = BenchConfig(models=(ModelLoad(model, rate, 10_000.0),), url=server.http_url, duration_s=duration_s,
                           warmup_s=1.0, seed=seed)  # fmt: skip
        requests_before, batches_before = _served(server, model)
        threads_before = _threads(server)
        started = time.monotonic()
        result = run(step, prepared=prepared, progress=progress, isolate=True)
        elapsed = time.monotonic() - started
        threads_after = _threads(server)
        requests_after, batches_after = _served(server, model)
        requests = requests_after - requests_before
        used = {name: threads_after[name] - threads_before[name] - idle.get(name, 0.0) * elapsed for name in idle}
        runs.append(
            {
                "rate_per_s": rate,
                "requests": float(requests),
                "batches": float(batches_after - batches_before),
                "seconds": elapsed,
                "event_loop_cpu_s": used["main"],
                "slot_cpu_s": used["slots"],
                "other_cpu_s": used["other"],
                "generator_cpu_s": result.generator.cpu_s,
                "generator_requests": float(sum(s.sent for s in result.per_model.values())),
                "generator_wall_s": result.generator.wall_s,
            }
        )
    loop_ms = _per_request([r["event_loop_cpu_s"] + r["other_cpu_s"] for r in runs], [r["requests"] for r in runs])
    slot_ms = _per_request([r["slot_cpu_s"] for r in runs], [r["requests"] for r in runs])
    generator_ms = _slope([r["generator_cpu_s"] for r in runs], [r["generator_requests"] for r in runs])
    decode_ms, encode_ms = _codec_costs(repository, model, prepared.requests[0])
    rest = max(loop_ms - decode_ms - encode_ms, 0.0)
    return ModelCosts(
        frontend_ms=decode_ms + rest / 2.0,
        reply_ms=encode_ms + rest / 2.0,
        slot_ms=slot_ms,
        generator_send_ms=generator_ms / 2.0,
        generator_receive_ms=generator_ms / 2.0,
        runs=runs,
    )


def _per_request(cpu_s: Sequence[float], requests: Sequence[float]) -> float:
    """Milliseconds per request, pooled over the runs (idle use already taken off)."""
    total = sum(requests)
    return 1000.0 * sum(cpu_s) / total if total else float("nan")


def _slope(cpu_s: Sequence[float], requests: Sequence[float]) -> float:
    """Milliseconds per extra request between the runs (a fixed cost per second drops out)."""
    if len(cpu_s) < 2 or requests[-1] == requests[0]:
        return _per_request(cpu_s, requests)
    return 1000.0 * (cpu_s[-1] - cpu_s[0]) / (requests[-1] - requests[0])


def _codec_costs(repository: Path, model: str, wire_request: bytes) -> tuple[float, float]:
    """(decode, encode) milliseconds of the model's request and response with squishy's codec, alone."""
    from squishy.frontend import codec
    from squishy.runtime.api import DATATYPES, InferResponse
    from squishy.runtime.repository import ModelRepository

    models = ModelRepository(repository)
    models.load(model)
    spec = models.spec(model)
    header_end = wire_request.index(b"\r\n\r\n") + 4
    head, body = wire_request[:header_end], wire_request[header_end:]
    header_length = None
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"inference-header-content-length:"):
            header_length = int(line.split(b":", 1)[1])
    request, selections = codec.parse_infer_request(body, header_length, spec, model, None, 0.0)
    started = time.perf_counter()
    for _ in range(CODEC_REPEATS):
        codec.parse_infer_request(body, header_length, spec, model, None, 0.0)
    decode_ms = (time.perf_counter() - started) * 1000.0 / CODEC_REPEATS
    outputs = {
        t.name: np.zeros((request.batch_size, *[max(d, 1) for d in t.dims]), dtype=DATATYPES[t.datatype])
        for t in spec.outputs
    }
    response = InferResponse(spec.name, spec.version, outputs)
    started = time.perf_counter()
    for _ in range(CODEC_REPEATS):
        codec.encode_infer_response(response, spec, selections, "")
    encode_ms = (time.perf_counter() - started) * 1000.0 / CODEC_REPEATS
    return decode_ms, encode_ms


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""

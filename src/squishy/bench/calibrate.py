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

Beside idle slots that work is cheaper than while serving: measured with the real model, the event loop's
and the generator's cost per request of ``resnet18-half`` were 2–3× the ``null-zero`` figures (shared caches
and memory bandwidth: a 600 kB image passes through both). So a second pass (``busy=True``) serves each
model alone with the real executor at rates well under its slots' limit (``BUSY_LIMIT_SHARES``), and
measures there the event loop's and the generator's cost per request and the slots' CPU per batch against
the profiled ℓ(b) (``execution_factor``). Those are the costs the twin charges; the ``null-zero`` pass
gives what the slot threads spend outside the executor and stays in ``idle_runs`` for comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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
from squishy.profiles.profiler import cpu_model_name

# Rates each model is run at; a higher one is skipped once the event loop is this busy (cores).
DEFAULT_RATES_PER_S = (100.0, 300.0, 1000.0, 2000.0)
BUSY_ENOUGH_CORES = 0.6
# Busy pass: each model at these shares of its slots' physical limit (and at the rates above that lie
# below the largest share), so the slots work but never saturate. The comparison's loads (50–95% of the
# measured goodput, and the search near it) lie above them.
BUSY_LIMIT_SHARES = (0.2, 0.4)
DEFAULT_DURATION_S = 8.0
IDLE_S = 3.0
CODEC_REPEATS = 300


@dataclass(frozen=True)
class ModelCosts:
    """CPU milliseconds per request of one model, on this machine, at the calibration rates.

    The cost per request falls as the rate grows (the event loop and the slots handle several requests
    per wake-up), so it is kept per rate and interpolated (``at``), not extrapolated from one rate.
    """

    rates_per_s: list[float]
    frontend_ms: list[float]  # event loop, request side (from the handler's start to queueing)
    reply_ms: list[float]  # event loop, reply side
    generator_ms: list[float]  # the load generator, sending and reading replies
    # Slot thread, outside the executor, per batch and per request in it (fitted over the rates: batches
    # grow with the rate, and most of this cost is per batch).
    slot_batch_ms: float = 0.0
    slot_request_ms: float = 0.0
    runs: list[dict[str, float]] = field(default_factory=list)  # the raw figures behind them
    # Slot CPU spent in the executor ÷ the profiled ℓ(b) of the batches it ran, with the real model
    # serving (1.0 when only the null-zero pass ran).
    execution_factor: float = 1.0
    idle_runs: list[dict[str, float]] = field(default_factory=list)  # the null-zero pass, when busy ran

    def at(self, rate_per_s: float) -> dict[str, float]:
        """The costs at a total rate: linear in log(rate) between calibration rates, flat beyond them."""
        log_rates = np.log(self.rates_per_s)
        where = float(np.log(max(rate_per_s, 1e-9)))

        def value(series: list[float]) -> float:
            return float(np.interp(where, log_rates, series))

        generator = value(self.generator_ms)
        return {
            "frontend_ms": value(self.frontend_ms),
            "reply_ms": value(self.reply_ms),
            "slot_batch_ms": self.slot_batch_ms,
            "slot_ms": self.slot_request_ms,
            "generator_send_ms": generator / 2.0,
            "generator_receive_ms": generator / 2.0,
            "execution_factor": self.execution_factor,
        }


@dataclass(frozen=True)
class Calibration:
    cores: int
    models: dict[str, ModelCosts]
    measured: str  # date and the command
    machine: str = ""
    # The request path's latency that is not CPU work (the generator's timer lateness, loopback, waking
    # threads up), from the null-zero pass at its lowest rate: the median p50 latency there minus the CPU
    # the twin charges per request (see ``wire_latency_ms``). 0 in calibrations made before it existed.
    wire_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        models = {name: ModelCosts(**costs) for name, costs in data["models"].items()}
        measured, machine = str(data.get("measured", "")), str(data.get("machine", ""))
        return cls(int(data["cores"]), models, measured, machine, float(data.get("wire_ms", 0.0)))

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
    busy: bool = False,
) -> Calibration:
    """Measure every model's costs against a ``null-zero`` server on this machine; with ``busy``, then
    against the real executor (see the module's notes), whose costs replace the idle ones."""
    costs: dict[str, ModelCosts] = {}
    with start_squishy(repository, ["--executor", "null-zero"]) as server:
        idle = _idle_rates(server)
        for model in models:
            runs, wire_request = _measure(server, model, idle, rates_per_s, duration_s, seed, progress)
            costs[model] = _costs(repository, model, runs, wire_request, *_fit_slot_costs(runs))
    wire_ms = wire_latency_ms(costs)  # beside idle slots: nothing but the path itself
    if busy:
        for model in models:
            costs[model] = _calibrate_busy(repository, model, costs[model], rates_per_s, duration_s, seed, progress)
    return Calibration(
        cores=len(os.sched_getaffinity(0)),
        models=costs,
        measured=time.strftime("%Y-%m-%d"),
        machine=cpu_model_name(),
        wire_ms=wire_ms,
    )


def wire_latency_ms(costs: dict[str, ModelCosts]) -> float:
    """The path's latency beyond its CPU work: per model, the null-zero run at the lowest rate (no queue
    anywhere), its client-side p50 minus the CPU the twin charges a request there (generator, event loop,
    slot thread); the median over the models, at least 0."""
    gaps = []
    for model_costs in costs.values():
        runs = [r for r in model_costs.runs if "latency_p50_ms" in r]
        if not runs:
            continue
        lowest = min(runs, key=lambda r: r["rate_per_s"])
        charged = model_costs.at(lowest["rate_per_s"])
        cpu_ms = (
            charged["frontend_ms"] + charged["reply_ms"] + charged["generator_send_ms"]
            + charged["generator_receive_ms"] + charged["slot_batch_ms"] + charged["slot_ms"]
        )  # fmt: skip
        gaps.append(max(lowest["latency_p50_ms"] - cpu_ms, 0.0))
    return float(np.median(gaps)) if gaps else 0.0


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


def _served(server: ServerProcess, model: str) -> tuple[int, int, dict[int, int]]:
    """(requests answered successfully, batches executed, batches by size) so far, from the statistics
    extension."""
    reply = httpx.get(f"{server.http_url}/v2/models/{model}/stats", timeout=10)
    stats = reply.json()["model_stats"][0]
    by_size = {int(entry["batch_size"]): int(entry["compute_infer"]["count"]) for entry in stats.get("batch_stats", [])}
    return int(stats["inference_stats"]["success"]["count"]), int(stats["execution_count"]), by_size


def _measure(
    server: ServerProcess,
    model: str,
    idle: dict[str, float],
    rates_per_s: Sequence[float],
    duration_s: float,
    seed: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], bytes]:
    """One fixed-rate run per rate (stopping once the event loop is busy enough): what each thread group and
    the generator spent, the requests and the batches by size; and one request as sent on the wire."""
    runs: list[dict[str, Any]] = []
    load = ModelLoad(model, rates_per_s[0], 10_000.0)
    config = BenchConfig(models=(load,), url=server.http_url, duration_s=duration_s, warmup_s=1.0, seed=seed)
    prepared = prepare(config)
    for rate in rates_per_s:
        if runs and runs[-1]["event_loop_cpu_s"] / runs[-1]["seconds"] > BUSY_ENOUGH_CORES:
            break  # the event loop is the bottleneck from here on: not a cost per request any more
        step = BenchConfig(models=(ModelLoad(model, rate, 10_000.0),), url=server.http_url, duration_s=duration_s,
                           warmup_s=1.0, seed=seed)  # fmt: skip
        requests_before, batches_before, sizes_before = _served(server, model)
        threads_before = _threads(server)
        started = time.monotonic()
        result = run(step, prepared=prepared, progress=progress, isolate=True)
        elapsed = time.monotonic() - started
        threads_after = _threads(server)
        requests_after, batches_after, sizes_after = _served(server, model)
        used = {name: threads_after[name] - threads_before[name] - idle.get(name, 0.0) * elapsed for name in idle}
        runs.append(
            {
                "rate_per_s": rate,
                "requests": float(requests_after - requests_before),
                "batches": float(batches_after - batches_before),
                "batch_sizes": {size: n - sizes_before.get(size, 0) for size, n in sizes_after.items()},
                "seconds": elapsed,
                "event_loop_cpu_s": used["main"] + used["other"],
                "slot_cpu_s": used["slots"],
                "generator_cpu_s": result.generator.cpu_s,
                "generator_wall_s": result.generator.wall_s,
                # The client's clock: what a request took end to end, and how late it went out.
                "latency_p50_ms": result.per_model[model].p50_ms,
                "send_lag_p50_ms": result.per_model[model].send_lag_p50_ms,
            }
        )
    return runs, prepared.requests[0]


def _costs(
    repository: Path,
    model: str,
    runs: list[dict[str, Any]],
    wire_request: bytes,
    slot_batch_ms: float,
    slot_request_ms: float,
    **extra: Any,
) -> ModelCosts:
    decode_ms, encode_ms = _codec_costs(repository, model, wire_request)
    loop_ms = [1000.0 * r["event_loop_cpu_s"] / r["requests"] for r in runs]
    return ModelCosts(
        rates_per_s=[r["rate_per_s"] for r in runs],
        frontend_ms=[decode_ms + max(loop - decode_ms - encode_ms, 0.0) / 2.0 for loop in loop_ms],
        reply_ms=[encode_ms + max(loop - decode_ms - encode_ms, 0.0) / 2.0 for loop in loop_ms],
        slot_batch_ms=slot_batch_ms,
        slot_request_ms=slot_request_ms,
        # The generator's CPU time covers the warm-up too: per request the server answered in the run.
        generator_ms=[1000.0 * r["generator_cpu_s"] / r["requests"] for r in runs],
        runs=runs,
        **extra,
    )


def busy_rates(limit_per_s: float, rates_per_s: Sequence[float] = DEFAULT_RATES_PER_S) -> list[float]:
    """The busy pass's rates for a model whose slots' physical limit is ``limit_per_s``: the shares of it in
    ``BUSY_LIMIT_SHARES`` (when below the largest calibration rate) and the calibration rates below them."""
    top = max(BUSY_LIMIT_SHARES) * limit_per_s
    shares = [share * limit_per_s for share in BUSY_LIMIT_SHARES if share * limit_per_s <= max(rates_per_s)]
    return sorted({round(rate, 1) for rate in [*shares, *(r for r in rates_per_s if r <= top)]})


def _calibrate_busy(
    repository: Path,
    model: str,
    idle_costs: ModelCosts,
    rates_per_s: Sequence[float],
    duration_s: float,
    seed: int,
    progress: bool,
) -> ModelCosts:
    """The model alone (a repository of its own, so nothing else is planned) on the real executor."""
    from squishy.sim.twin import Twin, physical_limit  # the twin reads this module's Calibration

    with tempfile.TemporaryDirectory(prefix="squishy-calibrate-") as scratch:
        alone = Path(scratch)
        shutil.copytree(repository / model, alone / model, copy_function=shutil.copy2)  # its profile cache too
        twin = Twin(alone, None, {model: 1.0})
        profile = twin.sessions[0][3]  # what the server will plan with: the same cached profile
        limit = physical_limit(twin)
        with start_squishy(alone, ["--executor", "onnxruntime"]) as server:
            idle = _idle_rates(server)
            rates = busy_rates(limit, rates_per_s)
            runs, wire_request = _measure(server, model, idle, rates, duration_s, seed, progress)
    executed_ms = 0.0
    profiled_ms = 0.0
    for r in runs:
        outside_ms = idle_costs.slot_batch_ms * r["batches"] + idle_costs.slot_request_ms * r["requests"]
        r["executed_ms"] = max(1000.0 * r["slot_cpu_s"] - outside_ms, 0.0)
        r["profiled_ms"] = sum(n * profile.latency_ms(size) for size, n in r["batch_sizes"].items())
        executed_ms += r["executed_ms"]
        profiled_ms += r["profiled_ms"]
    factor = executed_ms / profiled_ms if profiled_ms > 0 else 1.0
    return _costs(
        repository, model, runs, wire_request, idle_costs.slot_batch_ms, idle_costs.slot_request_ms,
        execution_factor=factor, idle_runs=idle_costs.runs,
    )  # fmt: skip


def _fit_slot_costs(runs: list[dict[str, float]]) -> tuple[float, float]:
    """Slot-thread CPU = a × batches + b × requests, least squares over the runs, a and b ≥ 0 (ms)."""
    batches = np.array([r["batches"] for r in runs])
    requests = np.array([r["requests"] for r in runs])
    cpu_ms = np.array([1000.0 * r["slot_cpu_s"] for r in runs])
    (a, b), *_ = np.linalg.lstsq(np.column_stack((batches, requests)), cpu_ms, rcond=None)
    if a < 0:
        return 0.0, float(cpu_ms.sum() / requests.sum())
    if b < 0:
        return float(cpu_ms.sum() / batches.sum()), 0.0
    return float(a), float(b)


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

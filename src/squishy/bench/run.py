"""One open-loop run: draw the schedule, send each request when it is due, record, summarize.

    from squishy.bench import Arrivals, BenchConfig, ModelLoad, run

    config = BenchConfig(models=(ModelLoad("resnet", rate_per_s=50, slo_ms=100),), url="http://127.0.0.1:8000",
                         arrivals=Arrivals.gamma(2.0), duration_s=10, warmup_s=2, seed=1)
    result = run(config)                # or run(config, isolate=True) when the server lives in this process
    result.overall.p99_ms, result.overall.goodput_per_s, result.overall.bad_rate, result.generator.cpu_share

The dispatcher sleeps until the next request is due and sends everything due, so sends never wait for
replies. It wakes on whole milliseconds (uvloop's timers have 1 ms resolution; waking early and
spinning cost up to 60% of a core at 5,000 req/s), so a request goes out up to ~1 ms after it is
due; that lag is reported and, since latency counts from the scheduled time, it is never hidden.

The generator's CPU time (``time.process_time()``, all its threads) over the run's wall time is
reported beside the figures: on a shared machine the generator competes with the server for cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvloop

from squishy.arrivals import schedule
from squishy.bench import metadata, payload
from squishy.bench.config import BenchConfig, InputSpec, parse_http_url
from squishy.bench.errors import BenchError
from squishy.bench.grpc_client import GrpcLoad
from squishy.bench.http_client import HttpLoad
from squishy.bench.records import Records, RequestLog, status_name
from squishy.bench.stats import Stats, summarize

_now = time.perf_counter
# The first request is due this long after the clients are ready, so it is not late by construction.
START_LEAD_S = 0.02
# When behind schedule, send at most this many before letting the loop read replies.
MAX_BURST = 256
PROGRESS_INTERVAL_S = 0.25
OVERDUE_CHECK_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Prepared:
    """What a run sends: one encoded request per model (built once, reused by every step of a search)."""

    protocol: str
    models: tuple[str, ...]
    requests: tuple[bytes, ...]
    inputs: tuple[tuple[InputSpec, ...], ...]  # the concrete inputs of each model


@dataclass(frozen=True)
class GeneratorUsage:
    cpu_s: float  # process_time() of the generator over the run
    wall_s: float
    cores: int

    @property
    def cpu_share(self) -> float:
        """Fraction of one core the generator used."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def machine_share(self) -> float:
        """Fraction of all the machine's cores the generator used."""
        return self.cpu_share / self.cores

    def to_dict(self) -> dict[str, float]:
        return {
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "cores": self.cores,
            "cpu_share": self.cpu_share,
            "machine_share": self.machine_share,
        }


@dataclass(frozen=True)
class RunResult:
    config: BenchConfig
    models: tuple[str, ...]
    per_model: dict[str, Stats]
    overall: Stats
    generator: GeneratorUsage
    log: RequestLog
    inputs: tuple[tuple[InputSpec, ...], ...]
    error_messages: dict[int, str] = field(default_factory=dict)
    cut_short: bool = False  # stopped early once the SLO target could no longer be met
    peak_connections: int = 0

    def passed(self, met_fraction: float = 0.99) -> bool:
        """Every model had at least ``met_fraction`` of its requests answered within its SLO."""
        return not self.cut_short and all(
            s.sent > 0 and s.met_fraction >= met_fraction for s in self.per_model.values()
        )

    def to_dict(self, *, include_requests: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "config": self.config.describe(),
            "inputs": {
                model: [{"name": s.name, "shape": list(s.shape), "datatype": s.datatype} for s in specs]
                for model, specs in zip(self.models, self.inputs, strict=True)
            },
            "per_model": {model: stats.to_dict() for model, stats in self.per_model.items()},
            "overall": self.overall.to_dict(),
            "generator": self.generator.to_dict(),
            "peak_connections": self.peak_connections,
            "cut_short": self.cut_short,
            "error_messages": {status_name(k): v for k, v in self.error_messages.items()},
        }
        if include_requests:
            data["requests"] = self.log.to_rows(self.models, [m.slo_ms for m in self.config.models])
        return data


def prepare(config: BenchConfig, overrides: dict[str, tuple[InputSpec, ...]] | None = None) -> Prepared:
    """Ask the server for each model's inputs and encode one request per model (random data, seeded).

    ``overrides`` maps a model name (or ``""`` for every model) to input shapes to use instead of the
    metadata's; for a model lacking such an input, the ``""`` entries are skipped.
    """
    overrides = overrides or {}
    rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0])
    address = parse_http_url(config.url) if config.protocol == "http" else None
    requests, inputs = [], []
    shared = overrides.get("", ())
    used: set[str] = set()
    for load in config.models:
        if address is not None:
            meta = metadata.fetch_http(address, load.model, load.version)
        else:
            meta = metadata.fetch_grpc(config.grpc_url, load.model, load.version)
        names = {t.name for t in meta.inputs}
        used |= names
        extra = tuple(s for s in shared if s.name in names) + overrides.get(load.model, ())
        specs = payload.input_shapes(meta, load, extra)
        tensors = [payload.random_tensor(spec, rng) for spec in specs]
        if address is not None and load.encoding == "json":
            requests.append(payload.http_json_request(address, load, tensors))
        elif address is not None:
            requests.append(payload.http_request(address, load, tensors))
        else:
            requests.append(payload.grpc_request(load, tensors))
        inputs.append(tuple(specs))
    unused = sorted({s.name for s in shared} - used)
    if unused:
        raise BenchError(f"no model driven has an input {', '.join(repr(u) for u in unused)}")
    return Prepared(config.protocol, tuple(m.model for m in config.models), tuple(requests), tuple(inputs))


def run(
    config: BenchConfig,
    *,
    prepared: Prepared | None = None,
    progress: bool = False,
    isolate: bool = False,
    stop_below_met_fraction: float | None = None,
) -> RunResult:
    """Run ``config`` and return its figures (blocking; a new uvloop event loop in this thread).

    ``isolate``: run the generator in a child process, so that a server living in this process (for
    instance ``start_in_thread``) does not share the generator's interpreter lock.
    ``stop_below_met_fraction``: stop as soon as that fraction of requests can no longer meet the SLO.
    """
    if isolate:
        with isolated_executor() as executor:
            return executor.submit(
                run, config, prepared=prepared, progress=progress, stop_below_met_fraction=stop_below_met_fraction
            ).result()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise BenchError("run() cannot be called from a running event loop: await run_async() instead")
    if prepared is None:
        prepared = prepare(config)
    return uvloop.run(
        run_async(config, prepared=prepared, progress=progress, stop_below_met_fraction=stop_below_met_fraction)
    )


def isolated_executor() -> concurrent.futures.ProcessPoolExecutor:
    """A one-process pool for ``run`` (spawned: a fork would copy a running server's threads)."""
    return concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


async def run_async(
    config: BenchConfig,
    *,
    prepared: Prepared | None = None,
    progress: bool = False,
    stop_below_met_fraction: float | None = None,
) -> RunResult:
    """The run itself, on the running event loop (uvloop recommended)."""
    if prepared is None:
        prepared = await asyncio.to_thread(prepare, config)  # blocking metadata requests
    if prepared.protocol != config.protocol:
        raise BenchError(f"requests were prepared for {prepared.protocol}, but the run is over {config.protocol}")
    if prepared.models != tuple(m.model for m in config.models):
        raise BenchError(f"requests were prepared for models {', '.join(prepared.models)}, not this run's")
    total_s = config.warmup_s + config.duration_s
    processes = [m.arrivals or config.arrivals for m in config.models]
    offsets_s, model_index = schedule([m.rate_per_s for m in config.models], processes, total_s, config.seed)
    counted = (offsets_s >= config.warmup_s) & (offsets_s < total_s)
    stop_after_bad = None
    if stop_below_met_fraction is not None:
        stop_after_bad = math.floor((1 - stop_below_met_fraction) * int(counted.sum()) + 1e-9)

    records = Records(
        offsets_s.tolist(),
        model_index.tolist(),
        [m.slo_ms / 1000 for m in config.models],
        counted.tolist(),
        stop_after_bad=stop_after_bad,
    )
    load: HttpLoad | GrpcLoad
    if config.protocol == "http":
        load = HttpLoad(
            parse_http_url(config.url),
            prepared.requests,
            records,
            initial_connections=config.effective_initial_connections,
            max_connections=config.max_connections,
        )
    else:
        load = GrpcLoad(config.grpc_url, prepared.requests, records, channels=config.grpc_channels)
    await load.start()
    bar = _progress_bar(len(offsets_s), config) if progress else None
    try:
        cpu_start_s = time.process_time()
        wall_start_s = _now()
        origin_s = wall_start_s + START_LEAD_S
        records.start(origin_s)  # the origin is fixed only once the clients are connected
        loop = asyncio.get_running_loop()
        reporter = loop.create_task(_report_progress(bar, records, load)) if bar else None
        watchdog = loop.create_task(_watch_overdue(records)) if stop_below_met_fraction is not None else None
        await _dispatch(records, load)
        if not records.cut_short:
            last_due_s = records.scheduled_s[-1] if len(records) else origin_s
            remaining_s = last_due_s + config.effective_drain_timeout_s - _now()
            # What is still out after the drain stays NO_REPLY: an error in every figure.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(records.finished.wait(), max(0.0, remaining_s))
        wall_s = _now() - wall_start_s
        cpu_s = time.process_time() - cpu_start_s
        for task in (reporter, watchdog):
            if task is not None:
                task.cancel()
    finally:
        await load.close()
        if bar is not None:
            bar.n = records.completed
            bar.close()

    log = records.to_log()
    slos = [m.slo_ms for m in config.models]
    per_model, overall = summarize(log, slos, config.warmup_s, config.duration_s)
    names = tuple(m.model for m in config.models)
    return RunResult(
        config=config,
        models=names,
        per_model=dict(zip(names, per_model, strict=True)),
        overall=overall,
        generator=GeneratorUsage(cpu_s, wall_s, _cores()),
        log=log,
        inputs=prepared.inputs,
        error_messages=dict(records.error_messages),
        cut_short=records.cut_short,
        peak_connections=load.peak_connections,
    )


async def _dispatch(records: Records, load: HttpLoad | GrpcLoad) -> None:
    due = records.scheduled_s
    submit = load.submit
    n = len(due)
    i = 0
    while i < n and not records.cut_short:
        now = _now()
        burst_end = i + MAX_BURST
        while i < n and i < burst_end and due[i] <= now:
            submit(i)
            i += 1
        if i >= n:
            break
        wait_s = due[i] - _now()
        if wait_s > 0:
            # Rounded up to whole ms: uvloop would round a shorter sleep down to zero and spin.
            await asyncio.sleep(math.ceil(wait_s * 1000) / 1000)
        else:
            await asyncio.sleep(0)  # behind schedule: let replies be read between bursts


async def _watch_overdue(records: Records) -> None:
    while not records.cut_short:
        await asyncio.sleep(OVERDUE_CHECK_INTERVAL_S)
        records.check_overdue(_now())


def _progress_bar(total: int, config: BenchConfig) -> Any:
    from tqdm import tqdm

    rate = config.total_rate_per_s
    return tqdm(
        total=total,
        unit="req",
        desc=f"{config.protocol} {rate:.1f} req/s",
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
        mininterval=PROGRESS_INTERVAL_S,
    )


async def _report_progress(bar: Any, records: Records, load: HttpLoad | GrpcLoad) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        bar.n = records.completed
        bar.set_postfix(in_flight=load.in_flight, queued=load.queued, bad=records.bad_counted, refresh=False)
        bar.refresh()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

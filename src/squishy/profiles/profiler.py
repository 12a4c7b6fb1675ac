"""Measure ℓ(b) of a model on this machine, and cache the result next to the model.

ONNX models run in ONNX Runtime sessions set up as the runtime's OnnxRuntimeExecutor sets them up; a
model of another platform (a TVM library) runs through its own executor, with inputs made up from the
tensors its config declares, since its file carries no graph to read them from.

A profile measured here is labelled ``cpu-<threads>t``: the same model on the same CPU with a different
intra-op thread count is a different device for the scheduler. Inputs are random tensors built from the
model's input specs; variable dimensions other than the batch dimension need sizes from the caller.

A measurement taken while other work held the CPUs is not the machine's ℓ(b). Each batch size's runs are
checked for interference (``disturbance``: the spread of the runs, and the time the measuring threads
waited for a CPU); a disturbed size is measured again, and a profile still disturbed after that is
flagged (``"disturbed"`` in the file, with the reason) so that it is used for one run, not trusted as
the cache. A cached profile is checked against a few quick batches before it is reused
(``cached_profile``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from squishy import __version__
from squishy.cluster.devices import CPU, Device, DeviceError, onnxruntime_providers
from squishy.errors import ProfileError
from squishy.profiles.io import load_profile
from squishy.profiles.profile import Profile

if TYPE_CHECKING:
    from squishy.runtime.api import ModelSpec
    from squishy.runtime.executors import Executor

DEFAULT_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 20
# Random integer inputs are drawn from [0, this): small enough to be a valid index into any embedding or
# vocabulary table a real model might gather from.
RANDOM_INT_HIGH = 2

# ONNX Runtime's type strings → numpy dtypes for the inputs the profiler can make up.
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- interference
# The runs of one batch size are *disturbed* (another process held the CPUs while they ran) when either
#  1. spread: the median run is more than DISTURBED_GAP above the fastest run, and by more than
#     DISTURBED_MIN_GAP_MS. On a quiet machine the runs of one size cluster within a few per cent of the
#     fastest; a busy machine preempts some runs and not others, which opens the gap (the issue's
#     ResNet at batch 8: 146 ms ± 56 ms against 68 ms quiet). The floor keeps the sub-0.1 ms jitter of
#     tiny models (a cache miss, a timer tick) from counting: no schedule turns on it.
#  2. wait: the typical run (the median over the runs) spent more than DISTURBED_WAIT_SHARE of its time,
#     and more than DISTURBED_MIN_GAP_MS, runnable but waiting for a CPU (the kernel's run-queue delay,
#     /proc/thread-self/schedstat, read around each run). A steady hog slows every run alike and leaves
#     no spread (smallcnn at batch 32 beside 4 spinning processes on 2 cores: every run 8 ms against
#     3.8 ms quiet, the thread waiting over half the time); this catches it. The median, as for ℓ(b):
#     one preemption that delays one run does not move the median run, so it does not count. It counts
#     only when the slots' threads fit the CPUs this process may use (more threads than CPUs wait on
#     each other by design, as they will when serving) and the kernel reports it.
DISTURBED_GAP = 0.25
DISTURBED_MIN_GAP_MS = 0.1
DISTURBED_WAIT_SHARE = 0.2
# A disturbed batch size is measured up to this many times in all (the first and 2 more); the cleanest
# attempt is kept. One still disturbed after that flags the profile.
MEASURE_ATTEMPTS = 3
# A cached profile is checked before it is reused: CHECK_REPEATS timed runs (after CHECK_WARMUP) at its
# smallest and largest batch size. It is measured again when a median is off by more than the factor
# CHECK_TOLERANCE either way (above 1.5x or below 0.67x the cached ℓ(b)) and by more than CHECK_MIN_MS.
CHECK_WARMUP = 1
CHECK_REPEATS = 3
CHECK_TOLERANCE = 1.5
CHECK_MIN_MS = 0.1


@dataclass(frozen=True)
class Disturbance:
    """How disturbed one batch size's runs look: ``score`` > 1 is disturbed, and ``reason`` says why."""

    score: float
    reason: str | None


def disturbance(samples_ms: Sequence[float], waits_ms: Sequence[float] | None = None) -> Disturbance:
    """Judge one batch size's timed runs (and how long each waited for a CPU, when known) by the rule
    above. The score is the worse of (median − fastest) / fastest over DISTURBED_GAP and the typical
    run's share of waiting over DISTURBED_WAIT_SHARE (each 0 within the DISTURBED_MIN_GAP_MS floor), so
    the attempt with the lowest score is the cleanest."""
    if not samples_ms:
        return Disturbance(0.0, None)
    fastest = float(np.min(samples_ms))
    median = float(np.median(samples_ms))
    gap_ms = median - fastest
    gap_score = gap_ms / fastest / DISTURBED_GAP if fastest > 0 and gap_ms > DISTURBED_MIN_GAP_MS else 0.0
    wait_score, wait_share, typical_wait_ms = 0.0, 0.0, 0.0
    if waits_ms is not None and len(waits_ms) == len(samples_ms):
        typical_wait_ms = float(np.median(waits_ms))
        shares = [min(w / t, 1.0) if t > 0 else 0.0 for w, t in zip(waits_ms, samples_ms, strict=True)]
        wait_share = float(np.median(shares))
        if typical_wait_ms > DISTURBED_MIN_GAP_MS:
            wait_score = wait_share / DISTURBED_WAIT_SHARE
    reasons = []
    if gap_score > 1:
        std = float(np.std(samples_ms, ddof=1)) if len(samples_ms) > 1 else 0.0
        reasons.append(
            f"median {median:.3g} ms is {median / fastest:.2f}x the fastest run {fastest:.3g} ms (std {std:.3g} ms)"
        )
    if wait_score > 1:
        reasons.append(f"a typical run waited for a CPU {wait_share:.0%} of its time ({typical_wait_ms:.3g} ms)")
    return Disturbance(max(gap_score, wait_score), ", ".join(reasons) or None)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _run_queue_wait_ns() -> int | None:
    """Nanoseconds the calling thread has spent runnable but waiting for a CPU (None: not reported)."""
    try:
        with open("/proc/thread-self/schedstat") as stats:
            return int(stats.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def device_label(threads: int, concurrency: int = 1, device: Device = CPU) -> str:
    """The device name profiles measured here carry: ``cpu-<threads>t`` (``gpu<i>`` for a GPU), and
    ``x<N>`` when N slots ran at once (each slot then sees the others' memory traffic, as it will when
    serving)."""
    name = f"cpu-{threads}t" if not device.is_gpu else device.label
    return name if concurrency == 1 else f"{name}x{concurrency}"


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def default_model_name(model_path: Path) -> str:
    """``<repo>/<model>/<version>/model.onnx`` → ``<model>`` (Triton layout); otherwise the file's stem."""
    parent = model_path.resolve().parent
    if parent.name.isdigit() and parent.parent.name:
        return parent.parent.name
    return model_path.stem


def cache_path(model_path: Path, threads: int, concurrency: int = 1, device: Device = CPU) -> Path:
    """Where the measured profile of ``model_path`` at ``threads`` threads is cached (beside the model):
    ``cpu-1t.profile-cache.json`` for a repository's ``model.*``, ``<stem>.cpu-1t.profile-cache.json`` for
    any other file, so that models in one directory (a prefix group's trunk and head) keep their own."""
    label = device_label(threads, concurrency, device)
    stem = "" if model_path.stem == "model" else f"{model_path.stem}."
    return model_path.parent / f"{stem}{label}.profile-cache.json"


def _open_session(model_path: Path, threads: int, device: Device = CPU) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The same settings as the runtime's OnnxRuntimeExecutor, so the profile predicts what it will see.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        providers = onnxruntime_providers(device)  # measured on the device it will run on
    except DeviceError as exc:
        raise ProfileError(f"{model_path}: {exc}") from None
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ProfileError(f"{model_path}: ONNX Runtime cannot load it: {' '.join(str(exc).split())}") from None


def _input_shapes(
    session: Any, model_path: Path, shapes: Mapping[str, Sequence[int]], batching: bool | None
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any], bool]:
    """Per input: the shape without the batch dim (all dims when not batching), its dtype; and batching."""
    inputs = session.get_inputs()
    unknown = set(shapes) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(i.name for i in inputs)
        raise ProfileError(f"{model_path}: --shape names an unknown input {sorted(unknown)[0]!r} (inputs: {names})")
    model_dims = {i.name: [d if isinstance(d, int) and d > 0 else -1 for d in i.shape] for i in inputs}
    if batching is None:
        batching = all(dims and dims[0] == -1 for dims in model_dims.values())
    out_shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, Any] = {}
    for node in inputs:
        dtype = _ORT_TYPES.get(node.type)
        if dtype is None:
            raise ProfileError(f"{model_path}: input {node.name!r} is {node.type}; the profiler cannot make it up")
        dims = model_dims[node.name][1:] if batching else model_dims[node.name]
        given = shapes.get(node.name)
        if given is not None:
            given = [int(d) for d in given]
            if len(given) != len(dims):
                what = "without the batch dimension " if batching else ""
                raise ProfileError(
                    f"{model_path}: input {node.name!r} has {len(dims)} dimensions {what}{dims}, "
                    f"but its shape was given as {given}"
                )
            for model_dim, given_dim in zip(dims, given, strict=True):
                if model_dim != -1 and given_dim not in (-1, model_dim):
                    raise ProfileError(
                        f"{model_path}: input {node.name!r} has dims {dims}; given shape {given} differs"
                    )
            dims = [m if m != -1 else g for m, g in zip(dims, given, strict=True)]
        if any(d < 1 for d in dims):
            example = ",".join(str(d if d > 0 else 8) for d in dims)
            raise ProfileError(
                f"{model_path}: input {node.name!r} has variable dimensions {dims}"
                f"{' after the batch dimension' if batching else ''}; give their sizes "
                f"(fixed dims in the model config, or --shape {node.name}={example})"
            )
        out_shapes[node.name] = tuple(dims)
        dtypes[node.name] = dtype
    return out_shapes, dtypes, batching


def _declared_input_shapes(
    spec: ModelSpec, model_path: Path, shapes: Mapping[str, Sequence[int]]
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any], bool]:
    """``_input_shapes`` for a model without a graph: the config's tensors (dims without the batch dim
    when ``max_batch_size`` > 0), variable dims filled from ``shapes``."""
    from squishy.runtime.api import DATATYPES

    batching = spec.max_batch_size > 0
    out_shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, Any] = {}
    for tensor in spec.inputs:
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None or dtype.kind == "O":
            raise ProfileError(
                f"{model_path}: input {tensor.name!r} is {tensor.datatype}; the profiler cannot make it up"
            )
        given = [int(d) for d in shapes.get(tensor.name, tensor.dims)]
        if len(given) != len(tensor.dims):
            raise ProfileError(
                f"{model_path}: input {tensor.name!r} has dims {list(tensor.dims)}, but its shape was given as {given}"
            )
        dims = [d if d != -1 else g for d, g in zip(tensor.dims, given, strict=True)]
        if any(d < 1 for d in dims):
            example = ",".join(str(d if d > 0 else 8) for d in dims)
            raise ProfileError(
                f"{model_path}: input {tensor.name!r} has variable dimensions {dims}; give their sizes "
                f"(fixed dims in the model config, or --shape {tensor.name}={example})"
            )
        out_shapes[tensor.name] = tuple(dims)
        dtypes[tensor.name] = dtype
    return out_shapes, dtypes, batching


class _ExecutorSession:
    """An executor behind the ``run(output_names, feed)`` call ``_time_runs`` makes of ORT sessions."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def run(self, _output_names: Any, feed: Mapping[str, np.ndarray]) -> Any:
        return self.executor.run(feed)


def _executor_sessions(spec: ModelSpec, model_path: Path, threads: int, concurrency: int) -> tuple[list[Any], str]:
    """One executor per slot for a non-ONNX ``spec`` and the backend's name for the profile's source."""
    from squishy.runtime.executors import ExecutorError, make_executor

    try:
        executors = [make_executor(replace(spec, model_path=model_path), "auto", threads) for _ in range(concurrency)]
    except ExecutorError as exc:
        raise ProfileError(f"{model_path}: {exc}") from None
    backend = spec.platform
    if spec.platform == "tvm_relax":
        import tvm

        backend = f"TVM {tvm.__version__} (Relax VM)"
    return [_ExecutorSession(e) for e in executors], backend


def _random_inputs(
    shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, Any], batch: int, batching: bool, seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in shapes.items():
        shape = (batch, *dims) if batching else dims
        dtype = np.dtype(dtypes[name])
        if dtype.kind == "f":
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[name] = rng.integers(0, RANDOM_INT_HIGH, shape).astype(dtype)
    return out


def measure_profile(
    model_path: str | Path,
    *,
    model_name: str | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    shapes: Mapping[str, Sequence[int]] | None = None,
    batching: bool | None = None,
    progress: bool = False,
    seed: int = 0,
    concurrency: int = 1,
    spec: ModelSpec | None = None,
    attempts: int = MEASURE_ATTEMPTS,
) -> Profile:
    """Run the model at each batch size (``warmup`` untimed runs, then ``repeats`` timed ones) and return
    the median and standard deviation of the batch latency as a profile for device ``cpu-<threads>t``.

    The median, not the mean: one run preempted by another process moves the mean by a share of its delay
    and leaves the median where it was; on a quiet machine the two agree within a few per cent. The
    fastest run would be more robust still, but it is the best case, which batches while serving do not
    reach every time: planning on it would promise more than a slot delivers.

    A batch size whose runs look disturbed (``disturbance``) is measured again, up to ``attempts`` times
    in all, and the cleanest attempt is kept (``extra["remeasured"]`` records the sizes a later attempt
    measured clean, and why). When some size is still disturbed, the profile says so in
    ``extra["disturbed"]`` (one reason per size, ``batch 8: median ...``): callers must not trust it
    beyond the run at hand (``cached_profile`` flags the cache so that the next start measures again).

    ``concurrency`` > 1 runs that many sessions at once, one per thread, as the server's slots will
    run: on a CPU the slots share caches and memory bandwidth, so a slot is slower when its neighbours
    work too (measured here: ResNet-18 at batch 4, 34 ms alone, 38 ms beside a second busy slot). Every
    session's runs count in the mean.

    The profile holds the measurements as they are, not cleaned: its ``to_dict()`` is the file to keep,
    and ``Profile.from_dict`` (which ``load_profile`` uses) gives the scheduler's cleaned view. On a CPU
    ℓ(b) is nearly linear, so noise alone can make a larger batch look a little worse per input, and
    cleaning would then drop a size that was measured; the file keeps it.

    ``shapes`` gives sizes for variable input dimensions (without the batch dimension when batching).
    ``batching`` says whether the leading dimension is the batch (default: when every input's leading
    dimension is variable). ``progress`` draws a tqdm bar on stderr. ``spec``, for a model that is not
    ONNX (platform ``tvm_relax``), says which executor runs it and declares its inputs (its
    ``max_batch_size`` then decides batching). Raises ProfileError.
    """
    return _measure_profile(
        model_path,
        model_name=model_name,
        batches=batches,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        shapes=shapes,
        batching=batching,
        progress=progress,
        seed=seed,
        concurrency=concurrency,
        spec=spec,
        attempts=attempts,
    )


def _measure_profile(
    model_path: str | Path,
    *,
    model_name: str | None,
    batches: Sequence[int],
    threads: int,
    warmup: int,
    repeats: int,
    shapes: Mapping[str, Sequence[int]] | None,
    batching: bool | None,
    progress: bool,
    seed: int,
    concurrency: int,
    spec: ModelSpec | None,
    attempts: int,
) -> Profile:
    """``measure_profile``; ``cached_profile`` checks a cache with it (not counted as a measurement)."""
    from tqdm import tqdm

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ProfileError(f"{model_path}: no such model file")
    batch_sizes = sorted(set(int(b) for b in batches))
    if not batch_sizes or batch_sizes[0] < 1:
        raise ProfileError(f"batch sizes must be positive integers, got {list(batches)}")
    if threads < 1 or warmup < 0 or repeats < 1:
        raise ProfileError(f"need threads >= 1, warmup >= 0 and repeats >= 1 (got {threads}, {warmup}, {repeats})")
    if concurrency < 1:
        raise ProfileError(f"concurrency must be at least 1, got {concurrency}")
    if attempts < 1:
        raise ProfileError(f"attempts must be at least 1, got {attempts}")
    if spec is not None and spec.platform != "onnxruntime_onnx":
        sessions, backend = _executor_sessions(spec, model_path, threads, concurrency)
        input_shapes, dtypes, batching = _declared_input_shapes(spec, model_path, shapes or {})
    else:
        import onnxruntime as ort

        device = spec.device if spec is not None else CPU
        sessions = [_open_session(model_path, threads, device) for _ in range(concurrency)]
        backend = f"onnxruntime {ort.__version__}"
        input_shapes, dtypes, batching = _input_shapes(sessions[0], model_path, shapes or {}, batching)
    if not batching and batch_sizes != [1]:
        raise ProfileError(
            f"{model_path}: the model does not batch (an input has a fixed first dimension); use batch size 1 only"
        )
    name = model_name or default_model_name(model_path)
    median_ms: dict[int, float] = {}
    std_ms: dict[int, float] = {}
    disturbed: dict[int, str] = {}
    remeasured: dict[int, str] = {}  # a size whose first attempt was disturbed and a later one clean
    # The run-queue wait says something only when the slots' threads fit the CPUs (see the rule above).
    count_wait = threads * concurrency <= _usable_cpus()
    bar = tqdm(
        total=len(batch_sizes) * (warmup + repeats),
        desc=f"profiling {name}",
        unit="run",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    try:
        for batch in batch_sizes:
            feed = _random_inputs(input_shapes, dtypes, batch, batching, seed)
            bar.set_postfix(batch=batch)
            best: tuple[Disturbance, list[float]] | None = None
            first: Disturbance | None = None
            for attempt in range(attempts):
                if attempt:
                    bar.total += warmup + repeats
                timing = _time_runs(sessions, feed, warmup, repeats, on_run=lambda: bar.update(1))
                if isinstance(timing, BaseException):
                    raise ProfileError(
                        f"{model_path}: {backend} failed at batch {batch}: {' '.join(str(timing).split())}"
                    ) from None
                samples_ms, waits_ms = timing
                judged = disturbance(samples_ms, waits_ms if count_wait else None)
                logger.debug(
                    "profiling %s: batch %d attempt %d: median %.4g ms, fastest %.4g ms, median wait %s: %s",
                    name, batch, attempt + 1, np.median(samples_ms), np.min(samples_ms),
                    "(unknown)" if waits_ms is None else f"{np.median(waits_ms):.3g} ms", judged.reason or "clean",
                )  # fmt: skip
                if first is None:
                    first = judged
                if best is None or judged.score < best[0].score:
                    best = (judged, samples_ms)
                if judged.reason is None:
                    break
            assert best is not None and first is not None
            judged, samples_ms = best
            if first.reason is not None and judged.reason is None:
                remeasured[batch] = f"{first.reason}; measured again, attempt {attempt + 1} clean"
                logger.info("profiling %s: batch %d was disturbed (%s)", name, batch, remeasured[batch])
            median_ms[batch] = float(np.median(samples_ms))
            std_ms[batch] = float(np.std(samples_ms, ddof=1)) if len(samples_ms) > 1 else 0.0
            if judged.reason is not None:
                disturbed[batch] = judged.reason
    finally:
        bar.close()
        for session in sessions:
            if isinstance(session, _ExecutorSession):
                session.executor.close()
    when = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    alongside = f", {concurrency} slots running at once" if concurrency > 1 else ""
    source = (
        f"squishy {__version__} profiler, {backend}, {threads} intra-op thread(s){alongside}, "
        f"median of {repeats} runs after {warmup} warm-up runs per batch size, on {cpu_model_name()} "
        f"({os.cpu_count()} logical CPUs), {when}"
    )
    # Built directly rather than with from_dict, so nothing measured is cleaned away (see above).
    return Profile(
        model=name,
        device=device_label(threads, concurrency, spec.device if spec is not None else CPU),
        precision="fp32",
        batch_ms=median_ms,
        std_ms=std_ms,
        source=source,
        extra={
            "statistic": "median",
            "batches_measured": batch_sizes,
            "input_shapes": {n: list(s) for n, s in input_shapes.items()},
            # Only when disturbed: one reason per batch size still disturbed after every attempt.
            **({"disturbed": "; ".join(f"batch {b}: {r}" for b, r in disturbed.items())} if disturbed else {}),
            # The sizes measured again, and why: a record for the operator (the kept attempt was clean).
            **({"remeasured": "; ".join(f"batch {b}: {r}" for b, r in remeasured.items())} if remeasured else {}),
        },
    )


def _time_runs(
    sessions: Sequence[Any], feed: Mapping[str, np.ndarray], warmup: int, repeats: int, on_run: Any
) -> tuple[list[float], list[float] | None] | BaseException:
    """Latencies (ms) of ``repeats`` timed runs after ``warmup`` untimed ones, on every session at once
    (one thread each; ONNX Runtime and TVM release the GIL), and how long (ms) each of those runs waited
    for a CPU, in the same order (None when the kernel does not say); the first error instead, if a run
    fails."""
    samples_ms: list[float] = []
    waits_ms: list[float] = []
    errors: list[BaseException] = []
    unknown_wait = False
    lock = threading.Lock()
    start = threading.Barrier(len(sessions))

    def work(session: Any, report: bool) -> None:
        nonlocal unknown_wait
        start.wait()
        for i in range(warmup + repeats):
            # The run-queue delay is read outside the timed window: the reads cost ~10 µs each.
            wait_before = _run_queue_wait_ns() if i >= warmup else None
            begin_ns = time.perf_counter_ns()
            try:
                session.run(None, feed)
            except Exception as exc:
                with lock:
                    errors.append(exc)
                return
            elapsed_ms = (time.perf_counter_ns() - begin_ns) / 1e6
            wait_after = _run_queue_wait_ns() if i >= warmup else None
            with lock:
                if i >= warmup:
                    samples_ms.append(elapsed_ms)
                    if wait_before is None or wait_after is None:
                        unknown_wait = True
                        waits_ms.append(0.0)
                    else:
                        waits_ms.append((wait_after - wait_before) / 1e6)
            if report:
                on_run()

    workers = [threading.Thread(target=work, args=(s, i == 0)) for i, s in enumerate(sessions)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        return errors[0]
    return samples_ms, None if unknown_wait else waits_ms


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile.to_dict()`` as JSON atomically (readers never see half a file). Returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not mkstemp, which makes 0600 files) so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cached_profile(
    model_path: str | Path,
    *,
    model_name: str,
    threads: int = 1,
    batches: Sequence[int] = DEFAULT_BATCHES,
    shapes: Mapping[str, Sequence[int]] | None = None,
    batching: bool | None = None,
    user_profile: str | Path | None = None,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    progress: bool = False,
    concurrency: int = 1,
    spec: ModelSpec | None = None,
    check: bool = True,
) -> Profile:
    """The profile the runtime schedules a model with, at model load time (``spec``: as for
    ``measure_profile``).

    1. ``user_profile`` (e.g. ``<repo>/<model>/profile.json``) when given: the user's numbers win, whatever
       device they name; the model name is set to ``model_name``. They are not checked.
    2. The cache beside the model file (``<version dir>/cpu-<threads>t[x<N>].profile-cache.json``) when it is
       newer than the model file, measured every batch size asked for, is not flagged ``disturbed``, and
       (``check``) agrees with a few quick batches run now (``check_cached``).
    3. Otherwise measure now and write the cache (a read-only repository just skips the write). A
       measurement still disturbed after its re-measurements is used for this run and written flagged
       ``disturbed``, so that the next start measures again instead of trusting it; a warning names the
       model and the spread.
    The profile returned is cleaned for scheduling (``Profile.from_dict``); the cache keeps the raw numbers.
    """
    if user_profile is not None:
        profile = load_profile(user_profile)
        if profile.extra.get("disturbed"):
            logger.warning(
                "%s: the profile %s says it was measured on a busy machine (%s); it is used as given",
                model_name, user_profile, profile.extra["disturbed"],
            )  # fmt: skip
        return profile if profile.model == model_name else replace(profile, model=model_name)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ProfileError(f"{model_path}: no such model file")
    device = spec.device if spec is not None else CPU
    path = cache_path(model_path, threads, concurrency, device)
    wanted = {int(b) for b in batches}
    try:
        fresh = path.stat().st_mtime_ns > model_path.stat().st_mtime_ns
    except OSError:
        fresh = False
    if fresh:
        try:
            cached = load_profile(path)
        except ProfileError:
            cached = None  # a damaged cache is re-measured, not fatal
        if (
            cached is not None
            and cached.model == model_name
            and cached.device == device_label(threads, concurrency, device)
            and wanted <= set(cached.extra.get("batches_measured", ()))
        ):
            if cached.extra.get("disturbed"):
                logger.info("%s: the cached profile was measured on a busy machine; measuring again", model_name)
            else:
                mismatch = (
                    check_cached(
                        cached,
                        model_path,
                        batches=sorted(wanted),
                        threads=threads,
                        shapes=shapes,
                        batching=batching,
                        concurrency=concurrency,
                        spec=spec,
                    )
                    if check
                    else None
                )
                if mismatch is None:
                    return cached
                logger.warning(
                    "%s: the cached profile %s disagrees with this machine now (%s); measuring again",
                    model_name, path, mismatch,
                )  # fmt: skip
    # A line per model in any log (the progress bar shows only on a terminal): profiling takes seconds.
    logger.info(
        "profiling %s: batches %s, %d thread(s) per slot, %d slot(s) at once",
        model_name, ",".join(map(str, sorted(wanted))), threads, concurrency,
    )  # fmt: skip
    profile = measure_profile(
        model_path,
        model_name=model_name,
        batches=sorted(wanted),
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        shapes=shapes,
        batching=batching,
        progress=progress,
        concurrency=concurrency,
        spec=spec,
    )
    if profile.extra.get("disturbed"):
        logger.warning(
            "%s: profile disturbed by other work on this machine after up to %d attempts per batch size (%s); "
            "using it for this run, cached flagged 'disturbed' so the next start measures again",
            model_name, MEASURE_ATTEMPTS, profile.extra["disturbed"],
        )  # fmt: skip
    with contextlib.suppress(OSError):  # the measurement is still good; it is just not cached
        write_profile(profile, path)
    return Profile.from_dict(profile.to_dict(), source_hint=str(path))


def check_cached(
    cached: Profile,
    model_path: str | Path,
    *,
    batches: Sequence[int],
    threads: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    batching: bool | None = None,
    concurrency: int = 1,
    spec: ModelSpec | None = None,
) -> str | None:
    """Run a few quick batches (CHECK_REPEATS timed runs at the smallest and the largest of ``batches``
    that the cached profile holds) and compare their medians with the cached ℓ(b): None when they agree,
    else what disagrees (off by more than CHECK_TOLERANCE either way and by more than CHECK_MIN_MS). A
    check that fails to run says so too: the cache is then measured again, which reports the error."""
    held = sorted(b for b in batches if b in cached.batch_ms) or sorted(cached.batch_ms)
    sizes = sorted({held[0], held[-1]})
    try:
        probe = _measure_profile(
            model_path,
            model_name=cached.model,
            batches=sizes,
            threads=threads,
            warmup=CHECK_WARMUP,
            repeats=CHECK_REPEATS,
            shapes=shapes,
            batching=batching,
            progress=False,
            seed=0,
            concurrency=concurrency,
            spec=spec,
            attempts=1,
        )
    except ProfileError as exc:
        return f"the check failed: {exc}"
    off = []
    for batch in sizes:
        was, now = cached.batch_ms[batch], probe.batch_ms[batch]
        ratio = now / was
        if (ratio > CHECK_TOLERANCE or ratio < 1 / CHECK_TOLERANCE) and abs(now - was) > CHECK_MIN_MS:
            off.append(f"ℓ({batch}) cached {was:.3g} ms, {now:.3g} ms now")
    return ", ".join(off) or None

"""Measure ℓ(b) of a model on this machine, and cache the result next to the model.

ONNX models run in ONNX Runtime sessions set up as the runtime's OnnxRuntimeExecutor sets them up; a
model of another platform (a TVM library) runs through its own executor, with inputs made up from the
tensors its config declares, since its file carries no graph to read them from.

A profile measured here is labelled ``cpu-<threads>t``: the same model on the same CPU with a different
intra-op thread count is a different device for the scheduler. Inputs are random tensors built from the
model's input specs; variable dimensions other than the batch dimension need sizes from the caller.
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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from squishy import __version__
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


def device_label(threads: int, concurrency: int = 1) -> str:
    """The device name profiles measured here carry: ``cpu-<threads>t``, and ``x<N>`` when N slots ran
    at once (each slot then sees the others' memory traffic, as it will when serving)."""
    return f"cpu-{threads}t" if concurrency == 1 else f"cpu-{threads}tx{concurrency}"


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


def cache_path(model_path: Path, threads: int, concurrency: int = 1) -> Path:
    """Where the measured profile of ``model_path`` at ``threads`` threads is cached (beside the model)."""
    return model_path.parent / f"{device_label(threads, concurrency)}.profile-cache.json"


def _open_session(model_path: Path, threads: int) -> Any:
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
        return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
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
) -> Profile:
    """Run the model at each batch size (``warmup`` untimed runs, then ``repeats`` timed ones) and return
    the mean and standard deviation of the batch latency as a profile for device ``cpu-<threads>t``.

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
    if spec is not None and spec.platform != "onnxruntime_onnx":
        sessions, backend = _executor_sessions(spec, model_path, threads, concurrency)
        input_shapes, dtypes, batching = _declared_input_shapes(spec, model_path, shapes or {})
    else:
        import onnxruntime as ort

        sessions = [_open_session(model_path, threads) for _ in range(concurrency)]
        backend = f"onnxruntime {ort.__version__}"
        input_shapes, dtypes, batching = _input_shapes(sessions[0], model_path, shapes or {}, batching)
    if not batching and batch_sizes != [1]:
        raise ProfileError(
            f"{model_path}: the model does not batch (an input has a fixed first dimension); use batch size 1 only"
        )
    name = model_name or default_model_name(model_path)
    mean_ms: dict[int, float] = {}
    std_ms: dict[int, float] = {}
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
            samples_ms = _time_runs(sessions, feed, warmup, repeats, on_run=lambda: bar.update(1))
            if isinstance(samples_ms, BaseException):
                raise ProfileError(
                    f"{model_path}: {backend} failed at batch {batch}: {' '.join(str(samples_ms).split())}"
                ) from None
            mean_ms[batch] = float(np.mean(samples_ms))
            std_ms[batch] = float(np.std(samples_ms, ddof=1)) if len(samples_ms) > 1 else 0.0
    finally:
        bar.close()
        for session in sessions:
            if isinstance(session, _ExecutorSession):
                session.executor.close()
    when = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    alongside = f", {concurrency} slots running at once" if concurrency > 1 else ""
    source = (
        f"squishy {__version__} profiler, {backend}, {threads} intra-op thread(s){alongside}, "
        f"mean of {repeats} runs after {warmup} warm-up runs per batch size, on {cpu_model_name()} "
        f"({os.cpu_count()} logical CPUs), {when}"
    )
    # Built directly rather than with from_dict, so nothing measured is cleaned away (see above).
    return Profile(
        model=name,
        device=device_label(threads, concurrency),
        precision="fp32",
        batch_ms=mean_ms,
        std_ms=std_ms,
        source=source,
        extra={
            "statistic": "mean",
            "batches_measured": batch_sizes,
            "input_shapes": {n: list(s) for n, s in input_shapes.items()},
        },
    )


def _time_runs(
    sessions: Sequence[Any], feed: Mapping[str, np.ndarray], warmup: int, repeats: int, on_run: Any
) -> list[float] | BaseException:
    """Latencies (ms) of ``repeats`` timed runs after ``warmup`` untimed ones, on every session at once
    (one thread each; ONNX Runtime and TVM release the GIL); the first error instead, if a run fails."""
    samples_ms: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(sessions))

    def work(session: Any, report: bool) -> None:
        start.wait()
        for i in range(warmup + repeats):
            begin_ns = time.perf_counter_ns()
            try:
                session.run(None, feed)
            except Exception as exc:
                with lock:
                    errors.append(exc)
                return
            elapsed_ms = (time.perf_counter_ns() - begin_ns) / 1e6
            with lock:
                if i >= warmup:
                    samples_ms.append(elapsed_ms)
            if report:
                on_run()

    workers = [threading.Thread(target=work, args=(s, i == 0)) for i, s in enumerate(sessions)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors[0] if errors else samples_ms


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
) -> Profile:
    """The profile the runtime schedules a model with, at model load time (``spec``: as for
    ``measure_profile``).

    1. ``user_profile`` (e.g. ``<repo>/<model>/profile.json``) when given: the user's numbers win, whatever
       device they name; the model name is set to ``model_name``.
    2. The cache beside the model file (``<version dir>/cpu-<threads>t[x<N>].profile-cache.json``) when it is
       newer than the model file and measured every batch size asked for.
    3. Otherwise measure now and write the cache (a read-only repository just skips the write).
    The profile returned is cleaned for scheduling (``Profile.from_dict``); the cache keeps the raw numbers.
    """
    if user_profile is not None:
        profile = load_profile(user_profile)
        return profile if profile.model == model_name else replace(profile, model=model_name)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ProfileError(f"{model_path}: no such model file")
    path = cache_path(model_path, threads, concurrency)
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
            and cached.device == device_label(threads, concurrency)
            and wanted <= set(cached.extra.get("batches_measured", ()))
        ):
            return cached
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
    with contextlib.suppress(OSError):  # the measurement is still good; it is just not cached
        write_profile(profile, path)
    return Profile.from_dict(profile.to_dict(), source_hint=str(path))

"""Variants generated from one ONNX model: other builds of the same network, each profiled here and its
accuracy measured on the user's validation set; only the Pareto-better ones on (accuracy, cost) are kept.

The builds (each one optional: a build that cannot be made here says why and is left out):

- ``ort-basic`` / ``ort-all``: the graph ONNX Runtime optimises at level BASIC / ALL, saved as a model;
- ``int8-dynamic``: weights quantised to int8, activations quantised at run time
  (``onnxruntime.quantization.quantize_dynamic``);
- ``int8-static``: weights and activations int8 (QDQ), activation ranges calibrated on the first
  ``CALIBRATION_SAMPLES`` validation samples (``quantize_static``);
- ``fp16``: weights and activations in half precision, inputs and outputs kept FP32
  (``onnxconverter_common``; ONNX Runtime's CPU provider lacks many fp16 kernels, so this is often slower
  here and then not kept);
- ``tvm``: the model compiled by TVM (Relax, untuned, ``llvm`` for this CPU) into a shared library,
  platform ``tvm_relax``, run by the runtime's TvmExecutor (``pip install 'squishy[tvm]'``).

Every build's answers are compared with the original's on the validation set: a float build must agree
within ``FLOAT_TOLERANCE`` (absolute, on the scored output) and a quantised one must give the original's
top answer on at least ``MIN_AGREEMENT`` of the samples, or it is rejected as broken, whatever its
accuracy. Cost is backend time per request at the saturating batch within the SLO, as the scheduler
counts it, from a profile measured here with the serving slot's thread count.

The output is a model-repository entry: one model per kept variant (``accuracy``, its 95% interval and the
checks in its ``parameters``) and a task (platform ``squishy_variants``) that lists them, which
``squishy serve`` loads as is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from squishy.errors import SquishyError
from squishy.runtime.api import ModelSpec, TensorSpec
from squishy.variants.entry import Tensor, config_text

BUILDS = ("ort-basic", "ort-all", "int8-dynamic", "int8-static", "fp16", "tvm")
CALIBRATION_SAMPLES = 128
# TVM computes in FP32 like the original, only in another summation order: its scores differed from
# ONNX Runtime's by at most 8.6e-7 (clutter-w16, 2,000 validation samples) and 6e-8 (the digits MLP),
# so the bound of ONNX Runtime's own optimisers holds with a wide margin.
FLOAT_TOLERANCE = {"ort-basic": 1e-4, "ort-all": 1e-4, "fp16": 5e-2, "tvm": 1e-4}
# Builds that are not ONNX files: the platform they are served with and their model file's name.
PLATFORMS = {"tvm": ("tvm_relax", "model.so")}
ONNX_PLATFORM = ("onnxruntime_onnx", "model.onnx")
MIN_AGREEMENT = 0.95
BOOTSTRAP_RESAMPLES = 1000
RUN_CHUNK = 256
SUMMARY_FILE = "variants.json"


@dataclass
class Candidate:
    """One build, measured."""

    name: str  # the model's name in the repository
    build: str  # original | ort-basic | ...
    path: Path
    accuracy: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    cost_ms: float = float("nan")  # backend time per request at the saturating batch
    agreement: float = float("nan")  # share of samples where its top answer is the original's
    max_abs_diff: float = float("nan")  # on the scored output, against the original
    build_s: float = 0.0
    note: str = ""  # how it was built, when that matters to whoever serves it (a TVM library's target)
    kept: bool = False
    why_not: str = ""
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Validation:
    inputs: dict[str, np.ndarray]  # one array per model input, samples on the leading axis
    labels: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> Validation:
        try:
            data = np.load(path)
        except (OSError, ValueError) as exc:
            raise SquishyError(f"cannot read the validation set {path}: {exc}") from None
        if "labels" not in data.files:
            raise SquishyError(f"{path}: the validation set needs an array 'labels' (one class per sample)")
        inputs = {name: data[name] for name in data.files if name != "labels"}
        labels = data["labels"].reshape(-1)
        for name, array in inputs.items():
            if len(array) != len(labels):
                raise SquishyError(f"{path}: input {name!r} has {len(array)} samples, 'labels' {len(labels)}")
        return cls(inputs, labels)


def generate_variants(
    models: str | Path | Sequence[str | Path],
    validation: Validation,
    out: str | Path,
    *,
    name: str,
    slo_ms: float,
    max_batch: int = 32,
    threads: int = 1,
    output: str | None = None,
    builds: Sequence[str] = BUILDS,
    progress: Callable[[str], None] = print,
) -> list[Candidate]:
    """Build, check, profile and measure every variant of each of ``models`` (the same task: the same
    tensors); write the kept ones, Pareto-better over all of them, and their task into the repository
    ``out``. Returns every candidate, kept or not, with the reason."""
    import onnxruntime as ort

    from squishy.runtime.repository import check_model_name, onnx_graph_io

    check_model_name(name)
    sources = [Path(models)] if isinstance(models, str | Path) else [Path(m) for m in models]
    if not sources:
        raise SquishyError("give at least one ONNX model")
    graph_inputs, graph_outputs = onnx_graph_io(sources[0])
    for other in sources[1:]:
        if onnx_graph_io(other) != (graph_inputs, graph_outputs):
            raise SquishyError(
                f"{other} has other inputs or outputs than {sources[0]}: variants of one task must match"
            )
    missing = [t.name for t in graph_inputs if t.name not in validation.inputs]
    if missing:
        raise SquishyError(f"the validation set has no array for input(s) {', '.join(missing)}")
    scored = output or graph_outputs[0].name
    if scored not in {t.name for t in graph_outputs}:
        raise SquishyError(f"the model has no output {scored!r} (outputs: {', '.join(t.name for t in graph_outputs)})")
    batching = all(t.shape and t.shape[0] == -1 for t in graph_inputs)

    def tensor_specs(entries: list[Any]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, _oip_type(t.triton_type), tuple(t.shape[1:] if batching else t.shape)) for t in entries
        )

    # What a build that is not an ONNX file is run with: the tensors its config will declare.
    template = ModelSpec(
        name, "1", "", max_batch if batching else 0, tensor_specs(graph_inputs), tensor_specs(graph_outputs), slo_ms
    )
    root = Path(out)
    work = Path(tempfile.mkdtemp(prefix="squishy-variants-"))
    try:
        candidates: list[Candidate] = []
        steps = len(sources) * (len(builds) + 1)
        step = 0
        for source in sources:
            prefix = name if len(sources) == 1 else f"{name}-{_source_name(source)}"
            step = _source_variants(
                source, prefix, validation, scored, builds, slo_ms, max_batch, threads, work, candidates, step, steps,
                progress, ort, template,
            )  # fmt: skip
        _pareto(candidates)
        kept = [c for c in candidates if c.kept]
        _write(root, name, kept, candidates, graph_inputs, graph_outputs, slo_ms, max_batch)
        progress(f"kept {len(kept)} of {len(candidates)}: {', '.join(c.name for c in kept)}; wrote {root}")
        return candidates
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _oip_type(triton_type: str) -> str:
    return "BYTES" if triton_type == "TYPE_STRING" else triton_type.removeprefix("TYPE_")


def _source_name(source: Path) -> str:
    """``<repo>/<model>/<version>/model.onnx`` is named by its model, any other file by its stem."""
    return source.parent.parent.name if source.name == "model.onnx" else source.stem


def _source_variants(
    source: Path,
    prefix: str,
    validation: Validation,
    scored: str,
    builds: Sequence[str],
    slo_ms: float,
    max_batch: int,
    threads: int,
    work: Path,
    candidates: list[Candidate],
    step: int,
    steps: int,
    progress: Callable[[str], None],
    ort: Any,
    template: ModelSpec,
) -> int:
    """Measure ``source`` and each of its builds into ``candidates``; returns the step count so far."""
    original = Candidate(f"{prefix}-original", "original", work / f"{prefix}-original.onnx")
    shutil.copyfile(source, original.path)
    step += 1
    progress(f"[{step}/{steps}] {original.name}: measuring")
    reference = _measure(original, validation, scored, None, slo_ms, max_batch, threads, ort, template)
    progress(f"    {_describe(original)}")
    candidates.append(original)
    for build in builds:
        step += 1
        suffix = Path(PLATFORMS.get(build, ONNX_PLATFORM)[1]).suffix
        candidate = Candidate(f"{prefix}-{build}", build, work / f"{prefix}-{build}{suffix}")
        progress(f"[{step}/{steps}] {candidate.name}: building")
        started = time.perf_counter()
        try:
            candidate.note = _build(build, source, candidate.path, validation, ort)
        except _Unavailable as exc:
            candidate.why_not = str(exc)
            progress(f"    left out: {candidate.why_not}")
            candidates.append(candidate)
            continue
        candidate.build_s = time.perf_counter() - started
        progress(f"[{step}/{steps}] {candidate.name}: measuring")
        try:
            _measure(candidate, validation, scored, reference, slo_ms, max_batch, threads, ort, template)
        except Exception as exc:  # a build its runtime cannot run here is a result, not a crash
            runtime = "TVM" if build in PLATFORMS else "ONNX Runtime"
            candidate.why_not = f"{runtime} cannot run it here: {str(exc).splitlines()[0][:200]}"
            progress(f"    left out: {candidate.why_not}")
            candidates.append(candidate)
            continue
        _check(candidate)
        progress(f"    {_describe(candidate)}" + (f" (rejected: {candidate.why_not})" if candidate.why_not else ""))
        candidates.append(candidate)
    return step


class _Unavailable(Exception):
    """A build that cannot be made here (a missing package, an unsupported graph)."""


def _build(build: str, source: Path, target: Path, validation: Validation, ort: Any) -> str:
    """Write the build of ``source`` to ``target``; returns a note for its config ("" when none)."""
    if build in ("ort-basic", "ort-all"):
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if build == "ort-basic"
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.optimized_model_filepath = str(target)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    elif build == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    elif build == "int8-static":
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                count = min(CALIBRATION_SAMPLES, len(validation.labels))
                self.samples = iter(
                    {k: v[i : i + 1].astype(np.float32, copy=False) for k, v in validation.inputs.items()}
                    for i in range(count)
                )

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.samples, None)

        quantize_static(
            str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
    elif build == "fp16":
        try:
            import onnx
            from onnxconverter_common import float16
        except ModuleNotFoundError:
            raise _Unavailable("needs onnxconverter-common (pip install onnxconverter-common)") from None
        converted = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(converted, str(target))
    elif build == "tvm":
        from squishy.variants.tvm_build import TvmUnavailableError, compile_onnx

        try:
            built = compile_onnx(source, target)
        except TvmUnavailableError as exc:
            raise _Unavailable(str(exc)) from None
        return f"{built.target_note} (compiled in {built.compile_s:.1f} s)"
    else:
        raise SquishyError(f"unknown build {build!r} (builds: {', '.join(BUILDS)})")
    return ""


def _run(
    path: Path, inputs: dict[str, np.ndarray], outputs: list[str], ort: Any, spec: ModelSpec | None = None
) -> dict[str, np.ndarray]:
    """The model's ``outputs`` on every sample; ``spec`` (not ONNX): the model is run by its executor."""
    count = len(next(iter(inputs.values())))
    if spec is not None:
        from squishy.runtime.executors import make_executor

        with make_executor(spec, "auto", threads=2) as executor:
            chunks = [
                [executor.run({k: v[i : i + RUN_CHUNK] for k, v in inputs.items()}, outputs)[n] for n in outputs]
                for i in range(0, count, RUN_CHUNK)
            ]
    else:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        chunks = [
            session.run(outputs, {k: v[i : i + RUN_CHUNK] for k, v in inputs.items()})
            for i in range(0, count, RUN_CHUNK)
        ]
    return {name: np.concatenate([chunk[j] for chunk in chunks]) for j, name in enumerate(outputs)}


def _answers(scores: np.ndarray) -> np.ndarray:
    if np.issubdtype(scores.dtype, np.integer):
        return scores.reshape(len(scores), -1)[:, 0]
    return scores.reshape(len(scores), -1).argmax(axis=1)


def _measure(
    candidate: Candidate,
    validation: Validation,
    scored: str,
    reference: np.ndarray | None,
    slo_ms: float,
    max_batch: int,
    threads: int,
    ort: Any,
    template: ModelSpec,
) -> np.ndarray:
    from squishy.profiles.profile import Profile
    from squishy.profiles.profiler import DEFAULT_BATCHES, measure_profile
    from squishy.scheduler import Settings
    from squishy.scheduler.variants import Task, Variant, request_cost_ms

    platform = PLATFORMS.get(candidate.build, ONNX_PLATFORM)[0]
    spec = None
    if platform != ONNX_PLATFORM[0]:
        spec = replace(template, name=candidate.name, platform=platform, model_path=candidate.path)
    scores = _run(candidate.path, validation.inputs, [scored], ort, spec)[scored].astype(np.float64)
    correct = _answers(scores) == validation.labels
    candidate.accuracy = float(correct.mean())
    candidate.ci_low, candidate.ci_high = _interval(correct)
    if reference is not None:
        candidate.agreement = float((_answers(scores) == _answers(reference)).mean())
        candidate.max_abs_diff = float(np.abs(scores - reference).max())
    batches = tuple(b for b in (*DEFAULT_BATCHES, 32) if b <= max(max_batch, 1))
    measured = measure_profile(candidate.path, model_name=candidate.name, batches=batches, threads=threads, spec=spec)
    candidate.profile = measured.to_dict()
    profile = Profile.from_dict(candidate.profile)
    task = Task(candidate.name, slo_ms, 1.0, (Variant(candidate.name, 0.0),))
    cost = request_cost_ms(task, task.variants[0], {candidate.name: profile}, Settings())
    candidate.cost_ms = cost if cost is not None else float("inf")
    if cost is None:
        candidate.why_not = f"cannot meet the {slo_ms:g} ms SLO here"
    return scores


def _interval(correct: np.ndarray) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(correct), size=(BOOTSTRAP_RESAMPLES, len(correct)))
    low, high = np.quantile(correct[draws].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def _check(candidate: Candidate) -> None:
    tolerance = FLOAT_TOLERANCE.get(candidate.build)
    if tolerance is not None and candidate.max_abs_diff > tolerance:
        candidate.why_not = f"its outputs differ from the original's by {candidate.max_abs_diff:.2g} (> {tolerance:g})"
    elif candidate.agreement < MIN_AGREEMENT:
        candidate.why_not = (
            f"its top answer differs from the original's on {1 - candidate.agreement:.1%} of the validation set "
            f"(> {1 - MIN_AGREEMENT:.0%})"
        )


def _pareto(candidates: list[Candidate]) -> None:
    """Keep a measured, checked candidate unless another is at least as accurate and at most as costly,
    and better in one (ties: the original, then the earlier build, stays)."""
    usable = [c for c in candidates if not c.why_not and np.isfinite(c.cost_ms)]
    for candidate in usable:
        dominated_by = next(
            (
                other
                for other in usable
                if other is not candidate
                and other.accuracy >= candidate.accuracy
                and other.cost_ms <= candidate.cost_ms
                and (
                    other.accuracy > candidate.accuracy
                    or other.cost_ms < candidate.cost_ms
                    or usable.index(other) < usable.index(candidate)
                )
            ),
            None,
        )
        if dominated_by is None:
            candidate.kept = True
        else:
            candidate.why_not = f"not Pareto-better: {dominated_by.name} is as accurate and as cheap or better"


def _write(
    root: Path,
    name: str,
    kept: list[Candidate],
    candidates: list[Candidate],
    graph_inputs: list[Any],
    graph_outputs: list[Any],
    slo_ms: float,
    max_batch: int,
) -> None:
    batching = all(t.shape and t.shape[0] == -1 for t in graph_inputs)
    batch_size = max_batch if batching else 0

    def tensors(entries: list[Any]) -> list[Tensor]:
        return [Tensor(t.name, t.triton_type, tuple(t.shape[1:] if batching else t.shape)) for t in entries]

    inputs, outputs = tensors(graph_inputs), tensors(graph_outputs)

    def config(model: str, platform: str, parameters: dict[str, str]) -> str:
        return config_text(model, platform, batch_size, inputs, outputs, {"slo_ms": f"{slo_ms:g}", **parameters})

    root.mkdir(parents=True, exist_ok=True)
    for candidate in kept:
        platform, filename = PLATFORMS.get(candidate.build, ONNX_PLATFORM)
        directory = root / candidate.name
        (directory / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate.path, directory / "1" / filename)
        parameters = {
            "accuracy": f"{candidate.accuracy:.4f}",
            "accuracy_ci95": f"{candidate.ci_low:.4f},{candidate.ci_high:.4f}",
            "variant_build": candidate.build,
        }
        if candidate.build != "original":
            parameters["agreement_with_original"] = f"{candidate.agreement:.4f}"
        if candidate.note:
            parameters["variant_build_note"] = candidate.note
        (directory / "config.pbtxt").write_text(config(candidate.name, platform, parameters))
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(
        config(name, "squishy_variants", {"variants": ",".join(c.name for c in kept), "accuracy_floor": "0"})
    )
    summary = [{k: v for k, v in asdict(c).items() if k not in ("path", "profile")} for c in candidates]
    (root / name / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n")


def _describe(candidate: Candidate) -> str:
    text = (
        f"accuracy {candidate.accuracy:.4f} ({candidate.ci_low:.4f}–{candidate.ci_high:.4f}), "
        f"{candidate.cost_ms:.3f} ms per request"
    )
    if np.isfinite(candidate.agreement):
        text += f", agrees with the original on {candidate.agreement:.1%}, max |Δ| {candidate.max_abs_diff:.2g}"
    return text

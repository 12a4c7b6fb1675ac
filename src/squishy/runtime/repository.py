"""The model repository: Triton's directory layout, read into ``ModelSpec`` objects the serving core runs.

Layout (the same as Triton's, so users can bring theirs)::

    <repo>/<model>/config.pbtxt        Triton ModelConfig in protobuf text format, or
    <repo>/<model>/config.yaml         the same fields as YAML (squishy's settings may be plain keys)
    <repo>/<model>/<version>/model.onnx (or ``default_model_filename``; ``model.pt`` for pytorch_libtorch,
                                        ``model.so`` for tvm_relax)
    <repo>/<model>/profile.json        optional: a user-given profile that takes precedence over measuring
    <repo>/<model>/<v>/model.profile.json  the same, where ``squishy profile <model file>`` writes it

squishy's settings ride in the config's ``parameters`` map (``slo_ms``, ``profile_batches``), so a
``config.pbtxt`` written for squishy still parses with Triton's ``ModelConfig``. For ONNX models a missing
or partial config is completed from the graph (inputs, outputs, datatypes, dims, ``max_batch_size`` from a
leading dynamic dimension), and a given config is checked against the graph, the way Triton's
auto-complete does. A model whose files are missing or invalid is UNAVAILABLE with the reason; the other
models load regardless. Synchronous on purpose: the server calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from squishy.cluster.devices import DeviceError, check_devices, requested_devices
from squishy.errors import ProfileError
from squishy.profiles import Profile
from squishy.profiles.profiler import cached_profile
from squishy.runtime.api import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelSpec,
    ModelState,
    TensorSpec,
)
from squishy.runtime.application import APPLICATION_FILENAME, PLATFORM_APPLICATION
from squishy.runtime.ensemble import PLATFORM_ENSEMBLE, EnsembleConfigError, ensemble_steps

ModelConfig = model_config_pb2.ModelConfig

# The SLO a model gets when its config does not set ``slo_ms``; a repository may pass another default.
DEFAULT_SLO_MS = 100.0
# ``max_batch_size`` given to an auto-completed ONNX model whose leading dimension is dynamic. Triton uses 4;
# squishy's scheduler gains from larger batches and bounds them by the profile and the SLO anyway.
DEFAULT_MAX_BATCH_SIZE = 32

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"

PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORM_TORCH = "pytorch_libtorch"
# A TVM Relax VM executable exported as a shared library for this machine's CPU (``squishy variants``
# builds it); squishy's own platform, Triton has none for TVM.
PLATFORM_TVM = "tvm_relax"
# A task served by whichever of its variant models the plan chose (``parameters`` ``variants``); it has
# no model file and needs no version directory.
PLATFORM_VARIANTS = "squishy_variants"
PARAM_VARIANTS = "variants"
PARAM_ACCURACY = "accuracy"
PARAM_ACCURACY_FLOOR = "accuracy_floor"
# Triton lets a config name a backend instead of a platform.
BACKEND_TO_PLATFORM = {
    "onnxruntime": PLATFORM_ONNX,
    "pytorch": PLATFORM_TORCH,
    "tvm": PLATFORM_TVM,
    PLATFORM_APPLICATION: PLATFORM_APPLICATION,
}
DEFAULT_MODEL_FILENAME = {
    PLATFORM_ONNX: "model.onnx",
    PLATFORM_TORCH: "model.pt",
    PLATFORM_TVM: "model.so",
    PLATFORM_APPLICATION: APPLICATION_FILENAME,
}
# Platforms whose executors the profiler can run to measure ℓ(b) at load time.
MEASURABLE_PLATFORMS = (PLATFORM_ONNX, PLATFORM_TVM)
CONFIG_FILENAMES = ("config.pbtxt", "config.yaml", "config.yml")
USER_PROFILE_FILENAMES = ("profile.json", "profile.yaml")

# squishy's settings in a config's ``parameters`` map.
PARAM_SLO_MS = "slo_ms"
PARAM_PROFILE_BATCHES = "profile_batches"

# ONNX TensorProto element type → Triton DataType name.
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


class ModelLoadError(InvalidRequestError):
    """A model (or every version of it) failed to load; the message says why. Triton answers 400 here."""


class ConfigError(ValueError):
    """A model's config or files are invalid; the message is the UNAVAILABLE reason."""


def oip_datatype(triton_type: int) -> str:
    """Triton's ``TYPE_FP32`` enum value → the Open Inference Protocol name ``FP32`` (``TYPE_STRING`` → BYTES)."""
    name = model_config_pb2.DataType.Name(triton_type)
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


# ------------------------------------------------------------------------------------- config files


def parse_config_text(text: str, fmt: str) -> ModelConfig:
    """Parse a config in ``pbtxt``, ``yaml`` or ``json`` (Triton's JSON form, as sent by a load request).

    YAML may carry squishy's settings (``slo_ms: 100``) as plain top-level keys and plain values in
    ``parameters``; both are moved into Triton's ``parameters`` map as strings. Raises ConfigError.
    """
    config = ModelConfig()
    if fmt == "pbtxt":
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            raise ConfigError(f"invalid config: {_first_line(exc)}") from None
        return config
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON config at line {exc.lineno}: {exc.msg}") from None
    elif fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or _first_line(exc)}") from None
        data = {} if data is None else data
    else:
        raise ValueError(f"unknown config format {fmt!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping, got {type(data).__name__}")
    data = _lift_plain_settings(data) if fmt == "yaml" else data
    try:
        json_format.ParseDict(data, config)
    except json_format.ParseError as exc:
        raise ConfigError(f"invalid config: {_first_line(exc)}") from None
    return config


def _config_field_names() -> set[str]:
    names: set[str] = set()
    for f in ModelConfig.DESCRIPTOR.fields:
        names.update((f.name, f.json_name))
    return names


def _lift_plain_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Move YAML's plain top-level settings into ``parameters`` (string values), keeping ModelConfig fields."""
    fields = _config_field_names()
    out: dict[str, Any] = {}
    params: dict[str, Any] = {}
    raw_params = data.get("parameters", {}) or {}
    if not isinstance(raw_params, dict):
        raise ConfigError("'parameters' must be a mapping")
    for key, value in raw_params.items():
        # Triton's JSON form is {"slo_ms": {"string_value": "100"}}; YAML users may write slo_ms: 100.
        params[str(key)] = value if isinstance(value, dict) else {"string_value": _setting_text(key, value)}
    for key, value in data.items():
        if key == "parameters":
            continue
        if key in fields:
            out[key] = value
            continue
        close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"unknown config field {key!r} (did you mean {close[0]!r}?)")
        if isinstance(value, dict):
            raise ConfigError(f"unknown config field {key!r}: a squishy setting must be a number, string or list")
        params[str(key)] = {"string_value": _setting_text(key, value)}
    if params:
        out["parameters"] = params
    return out


def _setting_text(key: object, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    raise ConfigError(f"setting {key!s} must be a number, a string or a list of them, got {type(value).__name__}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -------------------------------------------------------------------------------------- ONNX graphs


@dataclass(frozen=True)
class GraphTensor:
    name: str
    triton_type: str  # TYPE_FP32, ...
    shape: tuple[int, ...]  # full shape; -1 for a symbolic or unknown dimension


def onnx_graph_io(path: Path) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The real inputs (initializers excluded) and outputs of an ONNX file. Raises ConfigError."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises protobuf DecodeError, OSError, ValueError...
        raise ConfigError(f"not a valid ONNX model ({_first_line(exc)})") from None
    graph = model.graph
    initializers = {init.name for init in graph.initializer}

    def convert(values: Iterable[Any]) -> list[GraphTensor]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            kind = value.type.WhichOneof("value")
            if kind != "tensor_type":
                raise ConfigError(f"graph tensor {value.name!r} is a {kind}, not a tensor; squishy serves tensors")
            tensor = value.type.tensor_type
            triton_type = _ONNX_TO_TRITON.get(tensor.elem_type)
            if triton_type is None:
                raise ConfigError(f"graph tensor {value.name!r} has an unsupported element type {tensor.elem_type}")
            if not tensor.HasField("shape"):
                raise ConfigError(f"graph tensor {value.name!r} has no shape; export the model with shapes")
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            out.append(GraphTensor(value.name, triton_type, shape))
        return out

    inputs, outputs = convert(graph.input), convert(graph.output)
    if not inputs or not outputs:
        raise ConfigError("the ONNX graph has no inputs or no outputs")
    return inputs, outputs


def complete_onnx_config(config: ModelConfig, inputs: list[GraphTensor], outputs: list[GraphTensor]) -> None:
    """Fill what the config leaves out from the graph and check what it gives (in place). Raises ConfigError.

    ``max_batch_size`` when unset: DEFAULT_MAX_BATCH_SIZE if every input and output has a dynamic leading
    dimension, else 0 (no batching). Config inputs must exist in the graph with the same datatype and rank;
    graph inputs the config leaves out are added (every input must be fed); config outputs may be a subset.
    """
    graph_tensors = [*inputs, *outputs]
    leading_dynamic = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in graph_tensors)
    if config.max_batch_size == 0 and leading_dynamic and _dims_imply_batching(config, graph_tensors):
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    if config.max_batch_size < 0:
        raise ConfigError(f"max_batch_size {config.max_batch_size} is negative")
    batching = config.max_batch_size > 0
    if batching:
        for t in graph_tensors:
            # A fixed leading size would reject every batch of another size the scheduler forms.
            if not t.shape or t.shape[0] != -1:
                first = t.shape[0] if t.shape else "none (a scalar)"
                raise ConfigError(
                    f"max_batch_size is {config.max_batch_size} but graph tensor {t.name!r} has a fixed first "
                    f"dimension {first}; set max_batch_size: 0 or export the model with a dynamic batch dimension"
                )
    _complete_tensors(config.input, inputs, "input", batching, add_missing=True)
    _complete_tensors(config.output, outputs, "output", batching, add_missing=not config.output)


def _dims_imply_batching(config: ModelConfig, graph: list[GraphTensor]) -> bool:
    """Whether an unset ``max_batch_size`` means batching: yes unless some config tensor gives the full rank.

    protobuf cannot tell an unset ``max_batch_size`` from 0, so, like Triton, decide from the dims the
    config gives: dims without the leading dimension mean the model batches.
    """
    ranks = {t.name: len(t.shape) for t in graph}
    for entry in [*config.input, *config.output]:
        if entry.dims and entry.name in ranks and len(entry.dims) == ranks[entry.name]:
            return False
    return True


def _complete_tensors(entries: Any, graph: list[GraphTensor], kind: str, batching: bool, *, add_missing: bool) -> None:
    by_name = {t.name: t for t in graph}
    seen = set()
    for entry in entries:
        if not entry.name:
            raise ConfigError(f"a config {kind} has no name")
        tensor = by_name.get(entry.name)
        if tensor is None:
            raise ConfigError(
                f"config {kind} {entry.name!r} is not in the ONNX graph (graph {kind}s: {', '.join(by_name)})"
            )
        if entry.name in seen:
            raise ConfigError(f"config {kind} {entry.name!r} is listed twice")
        seen.add(entry.name)
        if entry.HasField("reshape"):
            raise ConfigError(f"config {kind} {entry.name!r} uses reshape, which squishy does not support")
        graph_dims = tensor.shape[1:] if batching else tensor.shape
        graph_type = model_config_pb2.DataType.Value(tensor.triton_type)
        if entry.data_type == model_config_pb2.TYPE_INVALID:
            entry.data_type = graph_type
        elif entry.data_type != graph_type:
            raise ConfigError(
                f"config {kind} {entry.name!r} has data_type {model_config_pb2.DataType.Name(entry.data_type)} "
                f"but the graph has {tensor.triton_type}"
            )
        if not entry.dims and graph_dims:
            entry.dims.extend(graph_dims)
            continue
        dims = tuple(entry.dims)
        if len(dims) != len(graph_dims):
            batch_note = " (without the batch dimension)" if batching else ""
            raise ConfigError(
                f"config {kind} {entry.name!r} has dims {list(dims)} but the graph's are {list(graph_dims)}{batch_note}"
            )
        for config_dim, graph_dim in zip(dims, graph_dims, strict=True):
            # A fixed config dim may narrow a dynamic graph dim; it may not contradict a fixed one, and a
            # variable config dim over a fixed graph dim would accept requests the runtime then rejects.
            if graph_dim != -1 and config_dim != graph_dim:
                raise ConfigError(
                    f"config {kind} {entry.name!r} has dims {list(dims)} but the graph's are {list(graph_dims)}"
                )
            if config_dim < -1 or config_dim == 0:
                raise ConfigError(f"config {kind} {entry.name!r} has an invalid dimension {config_dim}")
    if add_missing:
        for tensor in graph:
            if tensor.name not in seen:
                entry = entries.add()
                entry.name = tensor.name
                entry.data_type = model_config_pb2.DataType.Value(tensor.triton_type)
                entry.dims.extend(tensor.shape[1:] if batching else tensor.shape)


def _check_declared_tensors(config: ModelConfig) -> None:
    """Without a graph to read (TorchScript), the config itself must declare every tensor fully."""
    for kind, entries in (("input", config.input), ("output", config.output)):
        if not entries:
            raise ConfigError(f"the config lists no {kind}s; platform {config.platform} cannot be auto-completed")
        for entry in entries:
            if not entry.name or entry.data_type == model_config_pb2.TYPE_INVALID:
                raise ConfigError(f"config {kind} {entry.name or '?'!r} needs a name and a data_type")
            if any(d < -1 or d == 0 for d in entry.dims):
                raise ConfigError(f"config {kind} {entry.name!r} has an invalid dimension in {list(entry.dims)}")


# ---------------------------------------------------------------------------------- squishy settings


def default_profile_batches(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size`` (and it), or (1,) for a model that does not batch."""
    if max_batch_size <= 1:
        return (1,)
    sizes = []
    b = 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` → (1, 2, 4), sorted and unique; raises ValueError with the offending item."""
    sizes = set()
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"{item!r} is not a positive integer")
        sizes.add(int(item))
    if not sizes:
        raise ValueError("no batch sizes")
    return tuple(sorted(sizes))


def profile_batches(spec: ModelSpec) -> tuple[int, ...]:
    """The batch sizes to profile a model at (its ``profile_batches`` parameter, checked at load)."""
    return parse_batches(spec.parameters[PARAM_PROFILE_BATCHES])


def _apply_settings(config: ModelConfig, default_slo_ms: float) -> float:
    """Check squishy's parameters and write their effective values back, so /config shows them."""
    params = config.parameters
    if PARAM_SLO_MS in params:
        text = params[PARAM_SLO_MS].string_value
        try:
            slo_ms = float(text)
        except ValueError:
            slo_ms = float("nan")
        if not slo_ms > 0 or slo_ms == float("inf"):
            raise ConfigError(f"parameter slo_ms={text!r} is not a positive number of milliseconds")
    else:
        slo_ms = default_slo_ms
        params[PARAM_SLO_MS].string_value = f"{slo_ms:g}"
    limit = max(config.max_batch_size, 1)
    if PARAM_PROFILE_BATCHES in params:
        text = params[PARAM_PROFILE_BATCHES].string_value
        try:
            sizes = parse_batches(text)
        except ValueError as exc:
            raise ConfigError(f"parameter profile_batches={text!r}: {exc}") from None
        if sizes[-1] > limit:
            raise ConfigError(f"parameter profile_batches={text!r} goes beyond max_batch_size {config.max_batch_size}")
    else:
        sizes = default_profile_batches(config.max_batch_size)
    params[PARAM_PROFILE_BATCHES].string_value = ",".join(map(str, sizes))
    return slo_ms


# ------------------------------------------------------------------------------------ the directory


def check_model_name(name: str) -> None:
    """Reject names that are not one plain directory name (raises InvalidRequestError)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise InvalidRequestError(f"invalid model name {name!r}: it must be a plain directory name in the repository")


def _inside(path: Path, root: Path) -> bool:
    resolved = path.resolve()
    return resolved != root and resolved.is_relative_to(root)


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numeric version subdirectories; like Triton, names starting with 0 and non-numeric names are ignored."""
    out = {}
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and not child.name.startswith("0"):
            out[int(child.name)] = child
    return dict(sorted(out.items()))


def select_versions(config: ModelConfig, available: Sequence[int]) -> tuple[list[int], list[int]]:
    """(versions to load, versions the policy asks for that do not exist), per ``version_policy``."""
    policy = config.version_policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if policy == "all":
        return list(available), []
    if policy == "specific":
        wanted = sorted(set(config.version_policy.specific.versions))
        if not wanted:
            raise ConfigError("version_policy specific lists no versions")
        return [v for v in wanted if v in available], [v for v in wanted if v not in available]
    count = config.version_policy.latest.num_versions if policy == "latest" else 1
    if count < 1:
        raise ConfigError(f"version_policy latest needs num_versions >= 1, got {count}")
    return sorted(available)[-count:], []


@dataclass
class LoadResult:
    """What reading one model from disk produced: specs of its loadable versions and every version's state."""

    name: str
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    states: list[ModelState] = field(default_factory=list)

    @property
    def failure(self) -> str:
        """One line naming why nothing loaded ("" when some version is ready)."""
        if self.specs:
            return ""
        return "; ".join(f"version {s.version}: {s.reason}" if s.version else s.reason for s in self.states)


def read_model(
    root: Path,
    name: str,
    *,
    default_slo_ms: float = DEFAULT_SLO_MS,
    config_override: ModelConfig | None = None,
) -> LoadResult:
    """Read one model's config and versions. Never raises for a bad model: failures become states.

    ``root`` must be resolved; ``name`` must already have passed ``check_model_name``.
    """
    result = LoadResult(name)

    def fail(reason: str, version: str = "") -> LoadResult:
        result.states.append(ModelState(name, version, UNAVAILABLE, reason))
        return result

    model_dir = root / name
    if not _inside(model_dir, root):
        return fail(f"{name}: resolves outside the repository")
    if not model_dir.is_dir():
        return fail(f"{name}: not a directory")
    try:
        config = config_override if config_override is not None else _read_config(root, model_dir)
        if config.name and config.name != name:
            raise ConfigError(f"config name {config.name!r} differs from the directory name {name!r}")
        config.name = name
        if config.backend == PLATFORM_VARIANTS and not config.platform:
            config.platform = PLATFORM_VARIANTS
        if config.platform in (PLATFORM_VARIANTS, PLATFORM_ENSEMBLE):
            read = _read_task if config.platform == PLATFORM_VARIANTS else _read_ensemble
            spec = read(model_dir, config, default_slo_ms)
            result.specs[spec.version] = spec
            result.states.append(ModelState(name, spec.version, READY))
            return result
        versions = version_dirs(model_dir)
        if not versions:
            raise ConfigError(f"{name}: no version directories (numeric subdirectories such as {name}/1/)")
        _resolve_platform(config, model_dir, versions)
        chosen, missing = select_versions(config, list(versions))
    except (ConfigError, OSError) as exc:
        return fail(str(exc) if isinstance(exc, ConfigError) else f"{name}: cannot read ({exc.strerror})")
    for version in missing:
        fail(f"version {version} is asked for by version_policy but {name}/{version}/ does not exist", str(version))
    for version in chosen:
        version_config = ModelConfig()
        version_config.CopyFrom(config)
        try:
            spec = _read_version(root, model_dir, version, versions[version], version_config, default_slo_ms)
        except ConfigError as exc:
            fail(str(exc), str(version))
            continue
        result.specs[spec.version] = spec
        result.states.append(ModelState(name, spec.version, READY))
    return result


def _read_config(root: Path, model_dir: Path) -> ModelConfig:
    present = [model_dir / f for f in CONFIG_FILENAMES if (model_dir / f).exists()]
    if len(present) > 1:
        names = " and ".join(p.name for p in present)
        raise ConfigError(f"{model_dir.name}: both {names}; keep one")
    if not present:
        return ModelConfig()  # auto-completed from the model file, as Triton does without --strict-model-config
    path = present[0]
    rel = path.relative_to(root)
    if not _inside(path, root):
        raise ConfigError(f"{rel}: resolves outside the repository")
    fmt = "pbtxt" if path.suffix == ".pbtxt" else "yaml"
    try:
        return parse_config_text(path.read_text(), fmt)
    except ConfigError as exc:
        raise ConfigError(f"{rel}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{rel}: not a text file") from None


def _resolve_platform(config: ModelConfig, model_dir: Path, versions: Mapping[int, Path]) -> None:
    if config.backend and not config.platform:
        platform = BACKEND_TO_PLATFORM.get(config.backend)
        if platform is None:
            raise ConfigError(
                f"backend {config.backend!r} is not supported (supported: {', '.join(BACKEND_TO_PLATFORM)})"
            )
        config.platform = platform
    if config.platform == PLATFORM_VARIANTS:
        return
    if not config.platform:
        # Guess from the files, as Triton's auto-complete does: the newest version decides.
        newest = versions[max(versions)]
        candidates = [config.default_model_filename] if config.default_model_filename else []
        candidates += list(DEFAULT_MODEL_FILENAME.values())
        for filename in candidates:
            if (newest / filename).exists():
                config.platform = _platform_of_file(filename)
                break
        else:
            files = " or ".join(DEFAULT_MODEL_FILENAME.values())
            raise ConfigError(
                f"{model_dir.name}: cannot tell the platform (no {files} in {model_dir.name}/"
                f"{newest.name}/); set platform in the config"
            )
    if config.platform not in DEFAULT_MODEL_FILENAME:
        raise ConfigError(
            f"platform {config.platform!r} is not supported (supported: {', '.join(DEFAULT_MODEL_FILENAME)})"
        )
    if not config.backend:
        config.backend = next(b for b, p in BACKEND_TO_PLATFORM.items() if p == config.platform)


def _platform_of_file(filename: str) -> str:
    if filename.endswith((".pt", ".pth")):
        return PLATFORM_TORCH
    if filename.endswith(".so"):
        return PLATFORM_TVM
    if filename.endswith(".py"):
        return PLATFORM_APPLICATION
    return PLATFORM_ONNX


def variant_names(spec: ModelSpec) -> tuple[str, ...]:
    """The variant models a task lists, in the order given."""
    return tuple(n.strip() for n in spec.parameters.get(PARAM_VARIANTS, "").split(",") if n.strip())


def _read_task(model_dir: Path, config: ModelConfig, default_slo_ms: float) -> ModelSpec:
    """A task: its tensors declared in full (its variants must match them), its variants named."""
    name = model_dir.name
    listed = config.parameters[PARAM_VARIANTS].string_value if PARAM_VARIANTS in config.parameters else ""
    variants = [v.strip() for v in listed.split(",") if v.strip()]
    if not variants:
        raise ConfigError(
            f"{name}: platform {PLATFORM_VARIANTS} needs parameter variants (model names, comma-separated)"
        )
    for variant in variants:
        try:
            check_model_name(variant)
        except InvalidRequestError as exc:
            raise ConfigError(f"{name}: variant {variant!r}: {exc}") from None
        if variant == name:
            raise ConfigError(f"{name}: a task cannot be its own variant")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"{name}: parameter variants lists a model twice")
    if PARAM_ACCURACY_FLOOR in config.parameters:
        text = config.parameters[PARAM_ACCURACY_FLOOR].string_value
        if parse_accuracy(text) is None:
            raise ConfigError(f"{name}: parameter accuracy_floor={text!r} is not a number within [0, 1]")
    _check_declared_tensors(config)
    slo_ms = _apply_settings(config, default_slo_ms)
    config.backend = PLATFORM_VARIANTS
    return _declared_spec(name, "1", PLATFORM_VARIANTS, config, slo_ms)


def _read_ensemble(model_dir: Path, config: ModelConfig, default_slo_ms: float) -> ModelSpec:
    """A Triton ensemble: its tensors declared in full, its steps checked (the models they call are
    checked when it is served: they may load later). Its version is its newest version directory's, as
    Triton's (which wants one, possibly empty), or 1."""
    name = model_dir.name
    try:
        ensemble_steps(config, name)
    except EnsembleConfigError as exc:
        raise ConfigError(str(exc)) from None
    _check_declared_tensors(config)
    slo_ms = _apply_settings(config, default_slo_ms)
    versions = version_dirs(model_dir)
    return _declared_spec(name, str(max(versions)) if versions else "1", PLATFORM_ENSEMBLE, config, slo_ms)


def _declared_spec(name: str, version: str, platform: str, config: ModelConfig, slo_ms: float) -> ModelSpec:
    """The spec of a model with no file of its own (a task, an ensemble): all of it from its config."""
    return ModelSpec(
        name=name,
        version=version,
        platform=platform,
        max_batch_size=int(config.max_batch_size),
        inputs=_tensor_specs(config.input),
        outputs=_tensor_specs(config.output),
        slo_ms=slo_ms,
        config=config,
        parameters={k: v.string_value for k, v in config.parameters.items()},
    )


def parse_accuracy(text: str) -> float | None:
    """An accuracy parameter (a share within [0, 1]), or None if it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def _tensor_specs(entries: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(e.name, oip_datatype(e.data_type), tuple(int(d) for d in e.dims)) for e in entries)


def _read_version(
    root: Path, model_dir: Path, version: int, version_dir: Path, config: ModelConfig, default_slo_ms: float
) -> ModelSpec:
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME[config.platform]
    model_path = version_dir / filename
    rel = model_path.relative_to(root)
    if not model_path.is_file():
        raise ConfigError(f"{rel}: no such model file")
    if not _inside(model_path, root):
        raise ConfigError(f"{rel}: resolves outside the repository")
    if config.platform == PLATFORM_ONNX:
        try:
            inputs, outputs = onnx_graph_io(model_path)
            complete_onnx_config(config, inputs, outputs)
        except ConfigError as exc:
            raise ConfigError(f"{rel}: {exc}") from None
    else:
        if config.platform == PLATFORM_TORCH and importlib.util.find_spec("torch") is None:
            raise ConfigError(f"{rel}: platform {config.platform} needs PyTorch (pip install torch==2.13.0)")
        if config.platform == PLATFORM_TVM and importlib.util.find_spec("tvm") is None:
            raise ConfigError(f"{rel}: platform {config.platform} needs TVM (pip install 'squishy[tvm]')")
        _check_declared_tensors(config)
    try:
        devices = requested_devices(config)
        check_devices(devices, config.platform)
    except DeviceError as exc:
        raise ConfigError(f"{rel}: {exc}") from None
    slo_ms = _apply_settings(config, default_slo_ms)
    return ModelSpec(
        name=model_dir.name,
        version=str(version),
        platform=config.platform,
        max_batch_size=int(config.max_batch_size),
        inputs=_tensor_specs(config.input),
        outputs=_tensor_specs(config.output),
        slo_ms=slo_ms,
        model_path=model_path,
        config=config,
        parameters={k: v.string_value for k, v in config.parameters.items()},
        device=devices[0],
    )


# ------------------------------------------------------------------------------------ the repository


class ModelRepository:
    """The models of one repository directory and their load states; thread-safe, synchronous.

    ``load_all()`` at start-up, then ``load(name)`` / ``unload(name)`` / ``reload(name)`` from the
    repository API. ``index()`` lists every model on disk or loaded, one entry per version (a model that
    failed as a whole, or was never loaded, has one entry with version ""). ``spec(name)`` gives the
    newest ready version.
    """

    def __init__(self, root: str | Path, *, default_slo_ms: float = DEFAULT_SLO_MS) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {root}: not a directory")
        if not default_slo_ms > 0:
            raise ValueError(f"default_slo_ms must be positive, got {default_slo_ms}")
        self.default_slo_ms = default_slo_ms
        self._lock = threading.RLock()
        self._results: dict[str, LoadResult] = {}

    # ------------------------------------------------------------------------------------- listing
    def model_names(self) -> list[str]:
        """Model directories on disk (hidden ones skipped), sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def index(self, ready_only: bool = False) -> list[ModelState]:
        with self._lock:
            names = set(self.model_names()) | set(self._results)
            out: list[ModelState] = []
            for name in sorted(names):
                result = self._results.get(name)
                if result is None:
                    out.append(ModelState(name, "", UNAVAILABLE, "not loaded"))
                else:
                    out.extend(sorted(result.states, key=lambda s: (len(s.version), s.version)))
        return [s for s in out if s.state == READY] if ready_only else out

    def ready_specs(self) -> list[ModelSpec]:
        """Every ready version of every model."""
        with self._lock:
            return [spec for r in self._results.values() for _, spec in sorted(r.specs.items(), key=_version_key)]

    # -------------------------------------------------------------------------------------- control
    def load_all(self) -> list[ModelState]:
        """Load every model on disk; failures are recorded, never raised. Returns the index."""
        for name in self.model_names():
            # A failure is recorded in the index; one bad model must not stop the others.
            with contextlib.suppress(InvalidRequestError, ModelNotFoundError):
                self.load(name)
        return self.index()

    def load(self, name: str, config_override: str | None = None) -> list[ModelSpec]:
        """(Re)load one model from disk and return its ready versions, newest last.

        ``config_override`` is a config in Triton's JSON form (a load request's ``config`` parameter), used
        instead of the file. Raises ModelNotFoundError when there is no such directory, ModelLoadError
        (with every version's reason) when no version loads; the failure stays visible in ``index()``.
        """
        check_model_name(name)
        override = None
        if config_override is not None:
            try:
                override = parse_config_text(config_override, "json")
            except ConfigError as exc:
                raise ModelLoadError(f"failed to load {name!r}: {exc}") from None
        if not (self.root / name).exists():
            with self._lock:
                self._results.pop(name, None)
            raise ModelNotFoundError(f"model {name!r} is not in the repository {self.root}")
        # Read outside the lock: parsing a large ONNX file must not stall readiness and spec queries.
        result = read_model(self.root, name, default_slo_ms=self.default_slo_ms, config_override=override)
        with self._lock:
            previous = self._results.get(name)
            if not result.specs and previous is not None and previous.specs:
                # As in Triton, a failed reload leaves the versions already serving in place.
                serving = ", ".join(sorted(previous.specs, key=int))
                raise ModelLoadError(f"failed to load {name!r}: {result.failure}; still serving version(s) {serving}")
            self._results[name] = result
        if not result.specs:
            raise ModelLoadError(f"failed to load {name!r}: {result.failure}")
        return [spec for _, spec in sorted(result.specs.items(), key=_version_key)]

    reload = load

    def unload(self, name: str) -> None:
        """Mark every version of a model UNAVAILABLE ("unloaded"). Unloading an unloaded model is a no-op."""
        check_model_name(name)
        with self._lock:
            result = self._results.get(name)
            if result is None:
                if not (self.root / name).exists():
                    raise ModelNotFoundError(f"model {name!r} is not in the repository {self.root}")
                return
            versions = [s.version for s in result.states if s.state == READY] or [""]
            self._results[name] = LoadResult(
                name, states=[ModelState(name, v, UNAVAILABLE, "unloaded") for v in versions]
            )

    # -------------------------------------------------------------------------------------- queries
    def spec(self, name: str, version: str | None = None) -> ModelSpec:
        """A ready version (the newest when ``version`` is None or ""). Raises ModelNotFoundError/NotReady."""
        with self._lock:
            result = self._results.get(name)
            if result is None:
                if self._on_disk(name):
                    raise ModelNotReadyError(f"model {name!r} is not loaded")
                raise ModelNotFoundError(f"unknown model {name!r}")
            if version:
                spec = result.specs.get(version)
                if spec is not None:
                    return spec
                state = next((s for s in result.states if s.version == version), None)
                if state is None:
                    raise ModelNotFoundError(f"model {name!r} has no version {version!r}")
                raise ModelNotReadyError(f"model {name!r} version {version} is not ready: {state.reason}")
            if not result.specs:
                raise ModelNotReadyError(f"model {name!r} is not ready: {result.failure}")
            return max(result.specs.items(), key=_version_key)[1]

    def is_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.spec(name, version)
        except (ModelNotFoundError, ModelNotReadyError):
            return False
        return True

    def user_profile_path(self, name: str) -> Path | None:
        """``<repo>/<model>/profile.json`` (or .yaml) when the user gave one: it takes precedence over measuring."""
        check_model_name(name)
        for filename in USER_PROFILE_FILENAMES:
            path = self.root / name / filename
            if path.is_file() and _inside(path, self.root):
                return path
        return None

    def profile(
        self,
        spec: ModelSpec,
        threads: int,
        *,
        warmup: int = 3,
        repeats: int = 10,
        progress: bool = False,
        concurrency: int = 1,
    ) -> Profile:
        """The model's ℓ(b) on this machine with ``threads`` intra-op threads, cleaned for scheduling: the
        user's ``profile.json`` if any, else a cached measurement beside the model file (valid while newer
        than the model), else a fresh measurement at the config's ``profile_batches`` (takes seconds).
        Raises ProfileError; measuring needs an ONNX model or a TVM library (run by their executors)."""
        user_profile = self.user_profile_path(spec.name) or self._profiled_beside(spec)
        if user_profile is None and (spec.platform not in MEASURABLE_PLATFORMS or spec.model_path is None):
            raise ProfileError(
                f"model {spec.name!r}: squishy measures only ONNX models and TVM libraries; "
                f"put a profile.json in {spec.name}/"
            )
        return cached_profile(
            spec.model_path or Path(),
            model_name=spec.name,
            threads=threads,
            concurrency=concurrency,
            batches=profile_batches(spec),
            shapes={t.name: t.dims for t in spec.inputs},
            batching=spec.max_batch_size > 0,
            user_profile=user_profile,
            warmup=warmup,
            repeats=repeats,
            progress=progress,
            spec=spec,
        )

    def user_profiled(self, spec: ModelSpec) -> bool:
        """Whether ``spec``'s ℓ(b) is given by the user (``profile.json`` or ``<stem>.profile.json``), not
        measured here."""
        try:
            given = self.user_profile_path(spec.name)
        except InvalidRequestError:  # not a model directory's name (a trunk's or a head's)
            given = None
        return given is not None or self._profiled_beside(spec) is not None

    def _profiled_beside(self, spec: ModelSpec) -> Path | None:
        """What ``squishy profile <model file>`` writes by default: ``<stem>.profile.json`` beside the file."""
        if spec.model_path is None:
            return None
        path = spec.model_path.with_name(f"{spec.model_path.stem}.profile.json")
        return path if path.is_file() and _inside(path, self.root) else None

    def _on_disk(self, name: str) -> bool:
        try:
            check_model_name(name)
        except InvalidRequestError:
            return False
        return (self.root / name).is_dir()


def _version_key(item: tuple[str, Any]) -> int:
    return int(item[0])

"""Build the example model repository (Triton layout) that ``squishy serve`` and the tests run on.

Deterministic for a given seed, a few seconds on one core, and idempotent: a model whose recipe, seed and
files are unchanged since the last build is left alone (its files keep their modification times, so
profile caches beside them stay valid).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from squishy.examples import cnn, digits, game, ocr, trivial

DEFAULT_SEED = 0
VERSION = "1"
STAMP_FILE = ".squishy-build.json"
# Bump when a builder changes what it writes, so existing repositories are rebuilt.
RECIPE_REVISION = 1


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_FP32, ...
    dims: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class ExampleModel:
    name: str
    description: str
    slo_ms: float
    max_batch_size: int
    profile_batches: tuple[int, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    # seed → (ONNX bytes, extra config parameters such as test_accuracy)
    build: Callable[[int], tuple[bytes, dict[str, str]]] = field(repr=False)
    # What decides whether a built copy is current (package versions for shipped models).
    recipe: str = ""
    optional: str = ""  # why the model is skipped when it cannot be built here ("" for always)
    in_default: bool = True  # False: built only when asked for by name (``only``)


@dataclass(frozen=True)
class BuildResult:
    name: str
    status: str  # "built", "up to date", "skipped"
    detail: str = ""


def _build_digits(seed: int) -> tuple[bytes, dict[str, str]]:
    model = digits.train_digits(seed)
    params = {"test_accuracy": f"{model.test_accuracy:.4f}", "test_samples": str(len(model.test_labels))}
    return digits.digits_onnx(model).SerializeToString(), params


def _build_variant(family: str, task: str) -> Callable[[int], tuple[bytes, dict[str, str]]]:
    def build(seed: int) -> tuple[bytes, dict[str, str]]:
        head = game.game_head(task, seed, family)
        params = {
            "prefix_tensor": game.PREFIX_TENSOR,
            "test_accuracy": f"{head.test_accuracy:.4f}",
            "test_samples": str(head.test_samples),
        }
        return head.model.SerializeToString(), params

    return build


TASK_QUESTIONS = {
    "digit": "which digit",
    "parity": "even or odd",
    "large": "below 5 or not",
    "mod3": "the digit modulo 3",
    "prime": "prime or not",
    "loop": "drawn with a closed loop (0, 6, 8, 9) or not",
    **{f"is{k}": f"a {k} or not" for k in range(10)},
}


def prefix_family(
    family: str, tasks: Sequence[str], *, slo_ms: float = 100.0, max_batch_size: int = 16, in_default: bool = False
) -> list[ExampleModel]:
    """One model per task, all on ``family``'s trunk (``squishy.examples.game``), its head trained here: a
    prefix group for ``squishy serve``. Named ``<family>-<task>``."""
    trunk = game.TRUNKS[family]
    batches = (*(b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < max_batch_size), max_batch_size)
    return [
        ExampleModel(
            name=game.model_name(family, task),
            description=(
                f"prefix example: {trunk.description} (random weights, shared by {family}-*), "
                f"head trained here on digits: {TASK_QUESTIONS[task]}"
            ),
            slo_ms=slo_ms,
            max_batch_size=max_batch_size,
            profile_batches=batches,
            inputs=(Tensor(trunk.input_name, "TYPE_FP32", trunk.input_dims),),
            outputs=(Tensor("probabilities", "TYPE_FP32", (game.TASKS[task][0],)),),
            build=_build_variant(family, task),
            recipe=f"{game.model_name(family, task)} {trunk.description} cut={game.PREFIX_TENSOR}",
            in_default=in_default,
        )
        for task in tasks
    ]


def _shipped(name: str) -> Callable[[int], tuple[bytes, dict[str, str]]]:
    def build(seed: int) -> tuple[bytes, dict[str, str]]:
        del seed  # pretrained: nothing random
        return ocr.model_bytes(name), {"source": f"{ocr.DISTRIBUTION} {ocr.package_version()}: {ocr.MODEL_FILES[name]}"}

    return build


def example_models() -> list[ExampleModel]:
    """Every example model, the optional ones included (``build_examples`` skips those it cannot build)."""
    image = lambda size: (Tensor("image", "TYPE_FP32", (3, size, size)),)  # noqa: E731
    probabilities = lambda n: (Tensor("probabilities", "TYPE_FP32", (n,)),)  # noqa: E731
    ocr_recipe = f"{ocr.DISTRIBUTION}=={ocr.package_version()}"
    ocr_optional = f"needs {ocr.DISTRIBUTION} (pip install 'squishy[ocr]')"
    return [
        ExampleModel(
            name="digits",
            description="MLP classifier trained on scikit-learn's 8x8 digits; input: the data set's raw pixels (0-16)",
            slo_ms=20.0,
            max_batch_size=64,
            profile_batches=(1, 2, 4, 8, 16, 32, 64),
            inputs=(Tensor("pixels", "TYPE_FP32", (64,)),),
            outputs=(Tensor("probabilities", "TYPE_FP32", (10,)), Tensor("label", "TYPE_INT64", (1,))),
            build=_build_digits,
            recipe=f"digits hidden={digits.HIDDEN_UNITS} iterations={digits.MAX_ITERATIONS}",
        ),
        ExampleModel(
            name="double",
            description="trivial model: y = 2x; it measures the server's own overhead per request",
            slo_ms=50.0,
            max_batch_size=64,
            profile_batches=(1, 8, 64),
            inputs=(Tensor("x", "TYPE_FP32", (trivial.WIDTH,)),),
            outputs=(Tensor("y", "TYPE_FP32", (trivial.WIDTH,)),),
            build=lambda seed: (trivial.double_onnx().SerializeToString(), {}),
            recipe="double",
        ),
        ExampleModel(
            name="smallcnn",
            description="cheap CNN: 3 conv+pool layers on 3x64x64, random weights",
            slo_ms=50.0,
            max_batch_size=32,
            profile_batches=(1, 2, 4, 8, 16, 32),
            inputs=image(cnn.SMALLCNN_RESOLUTION),
            outputs=probabilities(cnn.SMALLCNN_CLASSES),
            build=lambda seed: (cnn.smallcnn_onnx(seed).SerializeToString(), {}),
            recipe=f"smallcnn channels={cnn.SMALLCNN_CHANNELS}",
        ),
        ExampleModel(
            name="resnet18-half",
            description="costly CNN: ResNet-18 topology at half width on 3x224x224, random weights",
            slo_ms=200.0,
            max_batch_size=16,
            profile_batches=(1, 2, 4, 8, 16),
            inputs=image(cnn.RESNET_RESOLUTION),
            outputs=probabilities(cnn.RESNET_CLASSES),
            build=lambda seed: (cnn.resnet18_half_onnx(seed).SerializeToString(), {}),
            recipe=f"resnet18-half width={cnn.RESNET_WIDTH} gain={cnn.RESIDUAL_GAIN}",
        ),
        ExampleModel(
            name="ppocr-det",
            description="PP-OCRv4 text detection (pretrained), fixed to 3x320x320 inputs; output: text probability map",
            slo_ms=400.0,
            max_batch_size=4,
            profile_batches=(1, 2, 4),
            inputs=(Tensor("x", "TYPE_FP32", (3, 320, 320)),),
            outputs=(Tensor("sigmoid_0.tmp_0", "TYPE_FP32", (1, 320, 320)),),
            build=_shipped("ppocr-det"),
            recipe=ocr_recipe,
            optional=ocr_optional,
        ),
        ExampleModel(
            name="ppocr-cls",
            description="PP-OCR text direction classifier (pretrained, 0 or 180 degrees) on 3x48x192 crops",
            slo_ms=50.0,
            max_batch_size=16,
            profile_batches=(1, 2, 4, 8, 16),
            inputs=(Tensor("x", "TYPE_FP32", (3, 48, 192)),),
            outputs=(Tensor("save_infer_model/scale_0.tmp_1", "TYPE_FP32", (2,)),),
            build=_shipped("ppocr-cls"),
            recipe=ocr_recipe,
            optional=ocr_optional,
        ),
        ExampleModel(
            name="ppocr-rec",
            description="PP-OCRv4 text recognition (pretrained, 6625 characters, CTC) on 3x48x320 crops",
            slo_ms=300.0,
            max_batch_size=8,
            profile_batches=(1, 2, 4, 8),
            inputs=(Tensor("x", "TYPE_FP32", (3, 48, 320)),),
            outputs=(Tensor("softmax_11.tmp_0", "TYPE_FP32", (-1, 6625)),),
            build=_shipped("ppocr-rec"),
            recipe=ocr_recipe,
            optional=ocr_optional,
        ),
        *prefix_family("game", game.EXAMPLE_TASKS),
    ]


def _available(model: ExampleModel) -> bool:
    return not model.optional or ocr.models_dir() is not None


def model_config(model: ExampleModel, extra_parameters: dict[str, str]) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(
        name=model.name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=model.max_batch_size,
    )
    for tensors, entries in ((model.inputs, config.input), (model.outputs, config.output)):
        for tensor in tensors:
            entry = entries.add(name=tensor.name, data_type=model_config_pb2.DataType.Value(tensor.data_type))
            entry.dims.extend(tensor.dims)
    parameters = {
        "slo_ms": f"{model.slo_ms:g}",
        "profile_batches": ",".join(map(str, model.profile_batches)),
        "description": model.description,
        **extra_parameters,
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def _config_text(config: model_config_pb2.ModelConfig) -> str:
    header = "# Written by `squishy build-examples`; squishy's settings are in parameters (slo_ms, profile_batches).\n"
    return header + text_format.MessageToString(config)


def _stamp_key(model: ExampleModel, seed: int) -> str:
    return f"{model.name} r{RECIPE_REVISION} seed={seed} {model.recipe}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _up_to_date(model_dir: Path, key: str) -> bool:
    try:
        stamp = json.loads((model_dir / STAMP_FILE).read_text())
        return (
            stamp.get("key") == key
            and all(_sha256(model_dir / rel) == digest for rel, digest in stamp.get("files", {}).items())
            and bool(stamp.get("files"))
        )
    except (OSError, ValueError, AttributeError):
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` only when the content differs (keeps mtimes, and so profile caches, when unchanged)."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not mkstemp, which makes 0600 files) so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_model(repo: Path, model: ExampleModel, seed: int = DEFAULT_SEED, *, force: bool = False) -> BuildResult:
    model_dir = repo / model.name
    key = _stamp_key(model, seed)
    if not force and _up_to_date(model_dir, key):
        return BuildResult(model.name, "up to date")
    onnx_bytes, extra = model.build(seed)
    config = model_config(model, extra)
    files = {f"{VERSION}/model.onnx": onnx_bytes, "config.pbtxt": _config_text(config).encode()}
    for rel, data in files.items():
        _write_atomic(model_dir / rel, data)
    stamp = {"key": key, "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}
    _write_atomic(model_dir / STAMP_FILE, (json.dumps(stamp, indent=2) + "\n").encode())
    detail = ", ".join(f"{k} {v}" for k, v in extra.items() if k != "source")
    return BuildResult(model.name, "built", detail)


def build_examples(
    repo: str | Path, *, seed: int = DEFAULT_SEED, only: Sequence[str] = (), force: bool = False
) -> list[BuildResult]:
    """Build the example models into ``repo`` (created if missing): the default ones, or those ``only``
    names (the game-like prefix example, ``game-*``, only when named)."""
    repo = Path(repo)
    models = example_models()
    known = {m.name for m in models}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ValueError(f"unknown example model {unknown[0]!r} (known: {', '.join(sorted(known))})")
    repo.mkdir(parents=True, exist_ok=True)
    results = []
    for model in models:
        if (only and model.name not in only) or (not only and not model.in_default):
            continue
        if not _available(model):
            results.append(BuildResult(model.name, "skipped", model.optional))
            continue
        try:
            results.append(build_model(repo, model, seed, force=force))
        except FileNotFoundError as exc:  # a shipped model missing from its (damaged) package
            results.append(BuildResult(model.name, "skipped", str(exc)))
    _write_atomic(repo / "README.md", _readme(models, repo).encode())
    return results


def _readme(models: list[ExampleModel], repo: Path) -> str:
    lines = [
        "# squishy example model repository",
        "",
        "Built by `squishy build-examples` (Triton layout: `<model>/config.pbtxt`, `<model>/1/model.onnx`).",
        "Rebuilding with the same seed gives the same models. Serve with `squishy serve --repository <this dir>`.",
        "",
        "| model | input | SLO ms | max batch | what it is |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        if not (repo / model.name / "config.pbtxt").is_file():
            continue
        shape = ", ".join(f"{t.name} {t.data_type.removeprefix('TYPE_')} {list(t.dims)}" for t in model.inputs)
        description = model.description
        accuracy = _parameter(repo / model.name / "config.pbtxt", "test_accuracy")
        description += f"; test accuracy {accuracy}" if accuracy else ""
        lines.append(f"| {model.name} | {shape} | {model.slo_ms:g} | {model.max_batch_size} | {description} |")
    return "\n".join(lines) + "\n"


def _parameter(config_path: Path, key: str) -> str:
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    return config.parameters[key].string_value if key in config.parameters else ""

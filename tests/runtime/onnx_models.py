"""Tiny ONNX models written in tests, and a helper to lay out a Triton-style repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# y = x @ WEIGHT: x FP32 [batch, 4] → y FP32 [batch, 2]
WEIGHT = np.arange(8, dtype=np.float32).reshape(4, 2) / 10


def linear_model(
    batch_dim: int | str = "batch", extra_dim: int | str = 4, input_type: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    """A MatMul: input ``x`` [batch_dim, extra_dim] → output ``y`` [batch_dim, 2] (plus a Cast when needed)."""
    nodes = []
    x = "x"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["x_float"], to=TensorProto.FLOAT))
        x = "x_float"
    nodes.append(helper.make_node("MatMul", [x, "w"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", input_type, [batch_dim, extra_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 2])],
        initializer=[numpy_helper.from_array(WEIGHT, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def add_model(
    repo: Path,
    name: str,
    *,
    config: str | None = None,
    config_name: str = "config.pbtxt",
    versions: tuple[int, ...] = (1,),
    model: onnx.ModelProto | None = None,
) -> Path:
    """Write ``<repo>/<name>/<config_name>`` (when given) and ``<repo>/<name>/<v>/model.onnx`` for each version."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / config_name).write_text(config)
    for version in versions:
        (model_dir / str(version)).mkdir(exist_ok=True)
        onnx.save(model if model is not None else linear_model(), str(model_dir / str(version) / "model.onnx"))
    return model_dir


PROFILED_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input {{ name: "x" data_type: TYPE_FP32 dims: [4] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [2] }}
parameters {{ key: "slo_ms" value {{ string_value: "{slo}" }} }}
{extra}
"""


def add_profiled_model(
    repo: Path, name: str, slo_ms: float, batch_ms: dict[str, float], *, max_batch: int = 8, extra: str = ""
) -> Path:
    """A linear model whose ℓ(b) is the user's ``profile.json`` (nothing is measured; the null executor
    and the simulator take these latencies): x FP32 [batch, 4] → y FP32 [batch, 2]."""
    config = PROFILED_CONFIG.format(name=name, slo=slo_ms, max_batch=max_batch, extra=extra)
    model_dir = add_model(repo, name, config=config)
    (model_dir / "profile.json").write_text(json.dumps({"model": name, "device": "cpu", "batch_ms": batch_ms}))
    return model_dir

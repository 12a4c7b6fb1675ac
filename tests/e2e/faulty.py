"""Models that misbehave on purpose, for the fault tests: real ONNX graphs that ONNX Runtime runs.

``faulty``: y = 2·x on FP32 [-1, 4], except that
- a row whose |x[0]| >= 16 makes the model raise (a Gather out of its 16-entry table): one bad input in a
  batch fails the whole batch, as a real model's data-dependent error would;
- a batch whose largest x[1] is N loops N times before answering: a huge N hangs the run (it would take
  hours), as a model stuck in its own control flow does.
``broken``: the same interface, but every run raises (its table is indexed past its end), so it cannot be
profiled: its load fails halfway, after its file was read and its session created.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from squishy.examples.graph import IR_VERSION, OPSET

WIDTH = 4
TABLE = 16  # |x[0]| at or beyond this raises
HANG = 1e12  # x[1] = HANG: loop iterations enough to hang for hours


def _spin_body() -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
        ],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )


def faulty_onnx(offset: float = 0.0) -> onnx.ModelProto:
    """``offset`` is added to |x[0]| before the table look-up: ``TABLE`` makes every run raise."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Slice", ["x", "at0", "at1", "axis1"], ["column0"]),
        helper.make_node("Abs", ["column0"], ["magnitude"]),
        helper.make_node("Add", ["magnitude", "offset"], ["shifted"]),
        helper.make_node("Cast", ["shifted"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"], axis=0),
        helper.make_node("Slice", ["x", "at1", "at2", "axis1"], ["column1"]),
        helper.make_node("ReduceMax", ["column1"], ["largest"], keepdims=0),
        helper.make_node("Cast", ["largest"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "true", "zero"], ["spun"], body=_spin_body()),
        helper.make_node("Mul", ["spun", "zero"], ["nothing"]),
        helper.make_node("Add", ["doubled", "looked_up"], ["partial"]),
        helper.make_node("Add", ["partial", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("offset", TensorProto.FLOAT, [], [offset]),
            helper.make_tensor("table", TensorProto.FLOAT, [TABLE], [0.0] * TABLE),
            helper.make_tensor("at0", TensorProto.INT64, [1], [0]),
            helper.make_tensor("at1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("at2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("true", TensorProto.BOOL, [], [True]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def config_text(name: str, slo_ms: float, max_batch_size: int = 16) -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input {{ name: "x" data_type: TYPE_FP32 dims: {WIDTH} }}
output {{ name: "y" data_type: TYPE_FP32 dims: {WIDTH} }}
dynamic_batching {{ }}
parameters {{ key: "slo_ms" value {{ string_value: "{slo_ms:g}" }} }}
parameters {{ key: "profile_batches" value {{ string_value: "1,4,16" }} }}
"""


def write_model(root: Path, name: str, model: onnx.ModelProto, slo_ms: float, version: int = 1) -> Path:
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / str(version) / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config_text(name, slo_ms))
    return model_dir

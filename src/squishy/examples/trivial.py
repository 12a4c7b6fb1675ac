"""``double``: y = 2·x on FP32 [-1, 4]. Nearly no work, so a server serving it measures its own overhead:
parsing, routing, queueing and replying (the frontend-bound case of the overload benchmark)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from squishy.examples.graph import IR_VERSION, OPSET

WIDTH = 4


def double_onnx() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model

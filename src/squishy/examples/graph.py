"""A few lines over ``onnx.helper`` to build small CNNs with seeded random weights (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX opset and IR version of every example model: old enough for any recent ONNX Runtime.
OPSET = 17
IR_VERSION = 8


class GraphBuilder:
    """Accumulates nodes and initializers; every tensor gets a unique name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def constant(self, value: np.ndarray, prefix: str = "const") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(
        self, op: str, inputs: list[str], prefix: str | None = None, output: str | None = None, **attrs: object
    ) -> str:
        """Append one node; its output is ``output`` when given (a graph output's name), else a fresh name."""
        out = output or self.name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, in_ch: int, out_ch: int, kernel: int, stride: int = 1, gain: float = 1.0) -> str:
        """Conv with bias, He-initialised (``gain`` scales it down where a residual branch joins)."""
        fan_in = in_ch * kernel * kernel
        weight = self.rng.standard_normal((out_ch, in_ch, kernel, kernel)) * gain * np.sqrt(2.0 / fan_in)
        bias = self.rng.standard_normal(out_ch) * 0.01
        return self.node(
            "Conv",
            [x, self.constant(weight.astype(np.float32), "w"), self.constant(bias.astype(np.float32), "b")],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[kernel // 2] * 4,
        )

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def max_pool(self, x: str, kernel: int, stride: int) -> str:
        return self.node(
            "MaxPool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[kernel // 2] * 4
        )

    def global_avg_pool_flat(self, x: str) -> str:
        return self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)

    def dense(self, x: str, in_features: int, out_features: int) -> str:
        weight = self.rng.standard_normal((in_features, out_features)) * np.sqrt(1.0 / in_features)
        bias = np.zeros(out_features)
        return self.node(
            "Gemm", [x, self.constant(weight.astype(np.float32), "w"), self.constant(bias.astype(np.float32), "b")]
        )

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], graph_name: str, doc: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="squishy build-examples",
            doc_string=doc,
        )
        onnx.checker.check_model(model)
        return model


def tensor_info(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

"""A small real ModelService for the frontend's tests, and a server on free loopback ports.

The service runs tiny ONNX models (built here with ``onnx.helper``) with ONNX Runtime, one request at a
time, no batching; the real serving core replaces it in production. Custom request parameters steer it
(which also proves custom parameters reach the core): ``delay_ms`` waits before answering and
``fail`` ∈ {unavailable, internal} raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from squishy.frontend import ThreadedServer, start_in_thread
from squishy.frontend.access import RepositoryControl
from squishy.runtime.api import (
    InferRequest,
    InferResponse,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelSpec,
    ModelState,
    ModelStatistics,
    TensorSpec,
    UnavailableError,
)

MAX_BODY_BYTES = 1 << 20


def affine_model() -> bytes:
    """y = x*2 + 1 and neg = -x over FP32 [N, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    neg = helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["N", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["twice"]),
            helper.make_node("Add", ["twice", "one"], ["y"]),
            helper.make_node("Neg", ["x"], ["neg"]),
        ],
        "affine",
        [x],
        [y, neg],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


AFFINE = ModelSpec(
    name="affine",
    version="1",
    platform="onnxruntime_onnx",
    max_batch_size=8,
    inputs=(TensorSpec("x", "FP32", (4,)),),
    outputs=(TensorSpec("y", "FP32", (4,)), TensorSpec("neg", "FP32", (4,))),
    slo_ms=100.0,
)
ECHO = ModelSpec(
    name="echo",
    version="1",
    platform="python",
    max_batch_size=0,
    inputs=(TensorSpec("text", "BYTES", (-1,)),),
    outputs=(TensorSpec("echo", "BYTES", (-1,)), TensorSpec("length", "INT32", (-1,))),
    slo_ms=50.0,
)


@dataclass
class _Model:
    spec: ModelSpec
    ready: bool = True
    stats: ModelStatistics = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ModelStatistics(self.spec.name, self.spec.version)


class OnnxTestService:
    """ModelService over the two test models; ``affine`` runs in ONNX Runtime, ``echo`` in numpy."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(affine_model(), options, providers=["CPUExecutionProvider"])
        self.models = {"affine": _Model(AFFINE), "echo": _Model(ECHO)}
        self.requests: list[InferRequest] = []  # every request that reached the core, for assertions
        self.finished = 0  # requests answered (including those whose client had gone)

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    def repository_index(self, ready_only: bool = False) -> list[ModelState]:
        return [
            ModelState(
                m.spec.name, m.spec.version, "READY" if m.ready else "UNAVAILABLE", "" if m.ready else "unloaded"
            )
            for m in self.models.values()
            if m.ready or not ready_only
        ]

    def _model(self, name: str, version: str | None) -> _Model:
        model = self.models.get(name)
        if model is None or version not in (None, "", model.spec.version):
            raise ModelNotFoundError(f"unknown model '{name}'" + (f" version {version}" if version else ""))
        return model

    def model_spec(self, name: str, version: str | None = None) -> ModelSpec:
        return self._model(name, version).spec

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self._model(name, version).ready

    async def infer(self, request: InferRequest) -> InferResponse:
        model = self._model(request.model_name, request.model_version)
        if not model.ready:
            raise ModelNotReadyError(f"model '{request.model_name}' is not loaded")
        self.requests.append(request)
        start_ns = time.perf_counter_ns()
        try:
            delay_ms = request.parameters.get("delay_ms", 0)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            fail = request.parameters.get("fail")
            if fail == "unavailable":
                raise UnavailableError(f"request to '{request.model_name}' cannot meet its deadline")
            if fail == "internal":
                raise RuntimeError("the executor crashed")
            if model.spec.name == "affine":
                y, neg = self._session.run(None, {"x": request.inputs["x"]})
                outputs = {"y": y, "neg": neg}
            else:
                text = request.inputs["text"]
                outputs = {"echo": text, "length": np.array([len(t) for t in text], dtype=np.int32)}
        except Exception:
            model.stats.fail_count += 1
            model.stats.fail_ns += time.perf_counter_ns() - start_ns
            raise
        finally:
            self.finished += 1
        elapsed_ns = time.perf_counter_ns() - start_ns
        stats = model.stats
        stats.success_count += 1
        stats.success_ns += elapsed_ns
        stats.inference_count += request.batch_size
        stats.execution_count += 1
        stats.compute_infer_count += 1
        stats.compute_infer_ns += elapsed_ns
        stats.last_inference_ms = int(time.time() * 1000)
        runs, ns = stats.batch_stats.get(request.batch_size, (0, 0))
        stats.batch_stats[request.batch_size] = (runs + 1, ns + elapsed_ns)
        if request.requested_outputs:
            outputs = {k: v for k, v in outputs.items() if k in request.requested_outputs}
        return InferResponse(model.spec.name, model.spec.version, outputs, request.request_id)

    async def load_model(self, name: str, config_override: str | None = None) -> None:
        self._model(name, None).ready = True

    async def unload_model(self, name: str) -> None:
        self._model(name, None).ready = False

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        if name is None:
            return [m.stats for m in self.models.values()]
        return [self._model(name, version).stats]


@pytest.fixture(scope="session")
def service() -> OnnxTestService:
    return OnnxTestService()


@pytest.fixture(scope="session")
def server(service: OnnxTestService) -> Iterator[ThreadedServer]:
    running = start_in_thread(service, max_body_bytes=MAX_BODY_BYTES, control=RepositoryControl("explicit"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def http_url(server: ThreadedServer) -> str:
    return f"http://127.0.0.1:{server.ports.http}"


@pytest.fixture(scope="session")
def grpc_url(server: ThreadedServer) -> str:
    return f"127.0.0.1:{server.ports.grpc}"

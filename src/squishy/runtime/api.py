"""The contract between the frontend (OIP REST/gRPC) and the serving core.

The frontend decodes and validates wire requests into ``InferRequest`` objects and calls a
``ModelService``; the service returns ``InferResponse`` objects or raises one of the ``ServingError``
subclasses, each of which knows its HTTP status and gRPC status code. Nothing here parses HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from squishy.cluster.devices import CPU, Device
from squishy.errors import SquishyError

# ------------------------------------------------------------------------------------------- errors


class ServingError(SquishyError):
    """An error answered to a client. ``http_status`` and ``grpc_code`` (a grpc.StatusCode name) map it."""

    http_status = 500
    grpc_code = "INTERNAL"


class InvalidRequestError(ServingError):
    """Malformed request, wrong shape/datatype/size, bad parameter: the client must fix it."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(ServingError):
    """No such model (or version) in the repository."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotReadyError(ServingError):
    """The model exists but is not loaded (failed to load, unloaded, still loading)."""

    http_status = 400
    grpc_code = "UNAVAILABLE"


class PayloadTooLargeError(ServingError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnavailableError(ServingError):
    """The request cannot meet its deadline (dropped early, or the server is overloaded): retry later."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class UnauthenticatedError(ServingError):
    """The request needs a credential it did not carry, or carried a wrong one."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class ForbiddenError(ServingError):
    """The server does not allow this operation (e.g. repository control when it is off)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class InternalError(ServingError):
    http_status = 500
    grpc_code = "INTERNAL"


# -------------------------------------------------------------------------------------- model specs

# OIP datatype name → numpy dtype. BYTES tensors are numpy object arrays of ``bytes``.
DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP name: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1 marks a variable size


@dataclass(frozen=True)
class ModelSpec:
    """One version of one model in the repository, as clients see it."""

    name: str
    version: str
    platform: str  # "onnxruntime_onnx", "pytorch_libtorch", ...
    max_batch_size: int  # 0: the model does not batch (no leading batch dimension)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    slo_ms: float  # the latency SLO squishy schedules this model for
    model_path: Path | None = None
    # Triton's ModelConfig protobuf (tritonclient.grpc.model_config_pb2.ModelConfig) for config RPCs.
    config: Any = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    # Where it runs: the first device its instance_group asks for (``squishy.cluster.devices``).
    device: Device = CPU


@dataclass(frozen=True)
class ModelState:
    """A repository index entry."""

    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING
    reason: str = ""


# ---------------------------------------------------------------------------------------- requests


@dataclass
class InferRequest:
    model_name: str
    model_version: str | None  # None or "": the newest ready version
    inputs: dict[str, np.ndarray]  # validated against the model's spec by the frontend
    requested_outputs: Sequence[str] = ()  # empty: all outputs
    request_id: str = ""
    priority: int = 0  # Triton's reserved parameter: 1 is highest, 0 the default level
    timeout_us: int = 0  # Triton's reserved parameter: 0 means none; deadline = min(SLO, timeout)
    arrival_ms: float = 0.0  # the serving clock's ms (time.monotonic() × 1000) when the request was received
    parameters: Mapping[str, Any] = field(default_factory=dict)
    # A composite's call (ensemble step, application call): the session of its stage, whose SLO is the
    # stage's share of the composite's. Set by the serving core, never from the wire.
    stage: str = ""

    @property
    def batch_size(self) -> int:
        """Inputs carried by this request (the leading dimension when the model batches)."""
        first = next(iter(self.inputs.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim > 0 else 1


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    request_id: str = ""
    parameters: dict[str, str] = field(default_factory=dict)  # response parameters (e.g. which variant answered)


@dataclass
class ModelStatistics:
    """Triton's per-model statistics; durations are cumulative nanoseconds."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # inputs inferred (a request of batch 4 counts 4)
    execution_count: int = 0  # batches executed
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_count: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    # batch size → (executions, compute ns)
    batch_stats: dict[int, tuple[int, int]] = field(default_factory=dict)


class ModelService(Protocol):
    """What the frontend needs from the serving core.

    The frontend calls the synchronous methods on its event loop: they must be cheap lookups. ``infer``
    is never cancelled by the frontend (a client that goes away just has its answer dropped), so it
    need not be cancel-safe; it raises UnavailableError at once when a deadline cannot be met.
    """

    def is_live(self) -> bool: ...

    def is_ready(self) -> bool: ...

    def repository_index(self, ready_only: bool = False) -> list[ModelState]: ...

    def model_spec(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec of a ready (or at least loadable) model; raises ModelNotFoundError."""
        ...

    def model_ready(self, name: str, version: str | None = None) -> bool: ...

    async def infer(self, request: InferRequest) -> InferResponse: ...

    async def load_model(self, name: str, config_override: str | None = None) -> None: ...

    async def unload_model(self, name: str) -> None: ...

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]: ...

"""What a model takes: its inputs (name, datatype, shape) and whether it has a batch dimension.

Asked of the server once before a run, over the protocol the run uses (REST ``GET v2/models/<m>`` and
``.../config``; gRPC ``ModelMetadata`` and ``ModelConfig``). This is also where "server down" and
"unknown model" are found, so they become one clear error before any load is sent.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

from squishy.bench.config import HttpAddress
from squishy.bench.errors import BenchError

METADATA_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: variable


@dataclass(frozen=True)
class ModelMeta:
    name: str
    inputs: tuple[TensorMeta, ...]
    # > 0: the first dimension of every input is the batch; 0: no batch dimension; None: the server
    # has no model configuration endpoint (MLServer), so a leading -1 is taken as the batch (OIP's rule).
    max_batch_size: int | None


def model_path(address: HttpAddress, model: str, version: str | None) -> str:
    path = f"{address.base_path}/v2/models/{quote(model, safe='')}"
    return path + (f"/versions/{quote(version, safe='')}" if version else "")


def fetch_http(address: HttpAddress, model: str, version: str | None = None) -> ModelMeta:
    base = f"http://{address.host_header}{model_path(address, model, version)}"
    doc = _get_json(base, model, address)
    try:
        config = _get_json(base + "/config", model, address)
        max_batch_size: int | None = int(config.get("max_batch_size", 0))
    except BenchError:
        max_batch_size = None
    return _model_meta(model, doc, max_batch_size)


def _get_json(url: str, model: str, address: HttpAddress) -> dict:
    server = f"http://{address.host_header}{address.base_path}"
    try:
        with urllib.request.urlopen(url, timeout=METADATA_TIMEOUT_S) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.read())
        if exc.code == 404:
            raise BenchError(f"model '{model}' is not known to the server at {server}: {message}") from None
        raise BenchError(f"the server at {server} answered {exc.code} to GET {url}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or reason
        raise BenchError(f"cannot reach the server at {server}: {reason}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise BenchError(f"the server at {server} answered GET {url} with something other than JSON") from None
    if not isinstance(doc, dict):
        raise BenchError(f"the server at {server} answered GET {url} with JSON that is not an object")
    return doc


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
    except ValueError:
        return body.decode(errors="replace").strip() or "(no message)"


def _model_meta(model: str, doc: dict, max_batch_size: int | None) -> ModelMeta:
    try:
        inputs = tuple(
            TensorMeta(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in doc["inputs"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"model '{model}': its metadata has no usable 'inputs' ({exc})") from None
    return ModelMeta(model, inputs, max_batch_size)


def fetch_grpc(target: str, model: str, version: str | None = None) -> ModelMeta:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            meta = stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=model, version=version or ""),
                timeout=METADATA_TIMEOUT_S,
                wait_for_ready=False,
            )
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.NOT_FOUND:
                raise BenchError(f"model '{model}' is not known to the server at {target}: {details}") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise BenchError(f"cannot reach the gRPC server at {target}: {details}") from None
            raise BenchError(
                f"the gRPC server at {target} answered ModelMetadata with {code.name}: {details}"
            ) from None
        max_batch_size: int | None
        try:
            config = stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=model, version=version or ""), timeout=METADATA_TIMEOUT_S
            )
            max_batch_size = int(config.config.max_batch_size)
        except grpc.RpcError:
            max_batch_size = None
    inputs = tuple(TensorMeta(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in meta.inputs)
    return ModelMeta(model, inputs, max_batch_size)

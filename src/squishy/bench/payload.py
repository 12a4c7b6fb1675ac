"""The request a model is sent, built once per run: random inputs of the right shape and datatype, encoded.

REST: the whole HTTP/1.1 request (request line, headers, JSON header, raw tensors; or, with the ``json``
encoding, the tensors as JSON lists) as one ``bytes``, so sending is a single socket write. gRPC: a
serialized ``ModelInferRequest`` with the tensors in ``raw_input_contents``, handed to grpc as bytes so
nothing is serialized per request. Outputs are asked for in binary: the server then skips JSON-encoding
them, and the client never reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from squishy.bench.config import HttpAddress, InputSpec, ModelLoad, ParameterValue
from squishy.bench.errors import BenchError
from squishy.bench.metadata import ModelMeta, model_path

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# Random integers stay small: integer inputs are often indices (token ids, classes) into a small table.
_MAX_RANDOM_INT = 100
_BYTES_ELEMENT_LENGTH = 8


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes  # raw little-endian elements; BYTES: 4-byte length + bytes per element


def input_shapes(meta: ModelMeta, load: ModelLoad, overrides: Sequence[InputSpec] = ()) -> list[InputSpec]:
    """Each input's concrete shape and datatype: the metadata's, the batch dimension set to the batch
    size, and the overrides' where given. A variable dimension left over is an error naming the input."""
    given = {spec.name: spec for spec in (*load.inputs, *overrides)}
    known = {t.name for t in meta.inputs}
    unknown = sorted(set(given) - known)
    if unknown:
        raise BenchError(
            f"model '{meta.name}' has no input {', '.join(repr(u) for u in unknown)}"
            f" (its inputs: {', '.join(sorted(known))})"
        )
    batched = meta.max_batch_size > 0 if meta.max_batch_size is not None else None
    specs = []
    for tensor in meta.inputs:
        spec = given.get(tensor.name)
        if spec is not None:
            specs.append(InputSpec(tensor.name, spec.shape, spec.datatype or tensor.datatype))
            continue
        shape = list(tensor.shape)
        has_batch = batched if batched is not None else bool(shape) and shape[0] == -1
        if has_batch and shape:
            shape[0] = load.batch_size
        if any(d < 0 for d in shape):
            example = ",".join(str(d if d >= 0 else 1) for d in shape)
            raise BenchError(
                f"model '{meta.name}' input '{tensor.name}' has a variable shape {list(tensor.shape)}:"
                f" give it with --input {tensor.name}={example}:{tensor.datatype}"
            )
        specs.append(InputSpec(tensor.name, tuple(shape), tensor.datatype))
    return specs


def random_tensor(spec: InputSpec, rng: np.random.Generator) -> Tensor:
    datatype = spec.datatype or "FP32"
    count = math.prod(spec.shape)
    if datatype == "BYTES":
        letters = rng.integers(ord("a"), ord("z") + 1, (count, _BYTES_ELEMENT_LENGTH), dtype=np.uint8)
        prefix = _BYTES_ELEMENT_LENGTH.to_bytes(4, "little")
        data = b"".join(prefix + row.tobytes() for row in letters)
    elif datatype == "BF16":
        # bfloat16 is the top half of a float32's bits.
        floats = rng.standard_normal(count).astype("<f4")
        data = (floats.view("<u4") >> 16).astype("<u2").tobytes()
    elif datatype == "BOOL":
        data = rng.integers(0, 2, count).astype(np.bool_).tobytes()
    else:
        dtype = np.dtype(_NUMPY_DTYPES[datatype]).newbyteorder("<")
        if np.issubdtype(dtype, np.floating):
            values = rng.standard_normal(count).astype(dtype)
        else:
            high = min(_MAX_RANDOM_INT, int(np.iinfo(dtype).max))
            values = rng.integers(0, high, count, endpoint=True).astype(dtype)
        data = values.tobytes()
    return Tensor(spec.name, datatype, spec.shape, data)


def http_request(address: HttpAddress, load: ModelLoad, tensors: Sequence[Tensor]) -> bytes:
    """The complete HTTP/1.1 infer request, binary tensor extension, ready to write to a socket."""
    parameters = {**load.parameters, "binary_data_output": True}
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "datatype": t.datatype,
                    "parameters": {"binary_data_size": len(t.data)},
                }
                for t in tensors
            ],
            "parameters": parameters,
        }
    )
    body = header + b"".join(t.data for t in tensors)
    head = (
        f"POST {model_path(address, load.model, load.version)}/infer HTTP/1.1\r\n"
        f"Host: {address.host_header}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def http_json_request(address: HttpAddress, load: ModelLoad, tensors: Sequence[Tensor]) -> bytes:
    """The same request with every tensor as a JSON list (no binary extension; the reply is JSON too)."""
    inputs = []
    for t in tensors:
        dtype = _NUMPY_DTYPES.get(t.datatype)
        if dtype is None:
            raise BenchError(f"model '{load.model}' input '{t.name}': {t.datatype} cannot be sent as JSON here")
        values = np.frombuffer(t.data, dtype=np.dtype(dtype).newbyteorder("<"))
        inputs.append({"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": values.tolist()})
    document: dict[str, object] = {"inputs": inputs}
    if load.parameters:
        document["parameters"] = dict(load.parameters)
    body = orjson.dumps(document)
    head = (
        f"POST {model_path(address, load.model, load.version)}/infer HTTP/1.1\r\n"
        f"Host: {address.host_header}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def grpc_request(load: ModelLoad, tensors: Sequence[Tensor]) -> bytes:
    """A serialized ``ModelInferRequest`` with raw input contents."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=load.model, model_version=load.version or "")
    for t in tensors:
        request.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        request.raw_input_contents.append(t.data)
    _set_grpc_parameters(request.parameters, load.parameters)
    return request.SerializeToString()


def _set_grpc_parameters(target: object, parameters: Mapping[str, ParameterValue]) -> None:
    for key, value in parameters.items():
        param = target[key]  # type: ignore[index]
        # bool before int: a bool is an int in Python.
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)

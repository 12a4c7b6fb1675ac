"""The REST wire format of inference: OIP JSON tensors and Triton's binary tensor extension.

Request body: a JSON header, optionally followed by raw tensors in input order; the header's length is
in ``Inference-Header-Content-Length`` and each binary input says its size in
``parameters.binary_data_size``. Responses mirror this: outputs asked for as binary (per output
``binary_data`` or request-level ``binary_data_output``) follow the JSON header as raw bytes. Bodies may
be gzip/deflate-compressed both ways (``Content-Encoding`` / ``Accept-Encoding``).

The tensor rules themselves live in ``validation`` so the gRPC path applies the very same ones.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from squishy.frontend import validation
from squishy.frontend.validation import OutputSelection
from squishy.runtime.api import (
    InferRequest,
    InferResponse,
    InvalidRequestError,
    ModelSpec,
    PayloadTooLargeError,
)

BodyChunks = list[bytes | memoryview]


class UnsupportedMediaTypeError(InvalidRequestError):
    """A request body in an encoding the server cannot read (RFC 9110: 415)."""

    http_status = 415


# zlib's window-bits: 16+ → gzip framing; 32+ → detect gzip or zlib (clients disagree on "deflate").
_WBITS_GZIP = 16 + zlib.MAX_WBITS
_WBITS_AUTO = 32 + zlib.MAX_WBITS


def decode_content(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding``; the decompressed size is held to ``max_bytes`` (decompression bombs)."""
    if not content_encoding:
        return body
    encoding = content_encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaTypeError(f"unsupported Content-Encoding '{content_encoding}'; use gzip or deflate")
    inflater = zlib.decompressobj(_WBITS_GZIP if encoding != "deflate" else _WBITS_AUTO)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidRequestError(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"decompressed request body exceeds the {max_bytes}-byte limit")
    if not inflater.eof:
        raise InvalidRequestError(f"request body is truncated {encoding} data")
    return data


def pick_response_encoding(accept_encoding: str | None) -> str | None:
    """gzip or deflate if the client accepts it (q > 0), gzip preferred; else None."""
    if not accept_encoding:
        return None
    accepted = set()
    for token in accept_encoding.lower().split(","):
        coding, _, params = token.partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q > 0:
            accepted.add(coding.strip())
    if "gzip" in accepted:
        return "gzip"
    if "deflate" in accepted:
        return "deflate"
    return None


def compress(chunks: BodyChunks, encoding: str) -> bytes:
    body = b"".join(chunks)
    # Level 1: on a serving hot path the CPU matters more than the last few percent of size.
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1, mtime=0)
    return zlib.compress(body, 1)


# ------------------------------------------------------------------------------------ requests


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    spec: ModelSpec,
    model_name: str,
    model_version: str | None,
    arrival_ms: float,
) -> tuple[InferRequest, list[OutputSelection]]:
    """A (decompressed) REST infer body → a validated ``InferRequest`` and the outputs to return."""
    if header_length is None:
        header, tail = body, memoryview(b"")
    else:
        if not 0 <= header_length <= len(body):
            raise InvalidRequestError(
                f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, tail = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = "" if header_length is not None else " (binary tensors need the Inference-Header-Content-Length header)"
        raise InvalidRequestError(f"malformed JSON in the inference request: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError("the inference request must be a JSON object")

    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequestError(f"request 'id' must be a string, got {request_id!r}")
    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidRequestError("request 'parameters' must be a JSON object")
    options = validation.parse_request_parameters(params)

    wire_inputs = doc.get("inputs")
    if not isinstance(wire_inputs, list):
        raise InvalidRequestError("the inference request needs an 'inputs' list")
    headers: list[tuple[str, str, tuple[int, ...]]] = []
    sizes: list[int | None] = []
    for i, item in enumerate(wire_inputs):
        name, datatype, shape, size = _input_header(i, item)
        headers.append((name, datatype, shape))
        sizes.append(size)
    validation.check_inputs(spec, headers)

    binary_total = sum(s for s in sizes if s is not None)
    if binary_total != len(tail):
        hint = " (is the Inference-Header-Content-Length header missing?)" if header_length is None else ""
        raise InvalidRequestError(
            f"the inputs' binary_data_size add up to {binary_total} bytes, but {len(tail)} bytes follow the JSON "
            f"header{hint}"
        )
    inputs = {}
    offset = 0
    for item, (name, datatype, shape), size in zip(wire_inputs, headers, sizes, strict=True):
        if size is not None:
            if "data" in item:
                raise InvalidRequestError(f"input '{name}' has both 'data' and parameter 'binary_data_size'")
            inputs[name] = validation.decode_binary(name, datatype, shape, tail[offset : offset + size])
            offset += size
        elif "data" in item:
            inputs[name] = validation.decode_json(name, datatype, shape, item["data"])
        else:
            raise InvalidRequestError(f"input '{name}' has neither 'data' nor parameter 'binary_data_size'")

    selections = validation.select_outputs(spec, _requested_outputs(doc.get("outputs")), options.binary_data_output)
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        requested_outputs=tuple(s.name for s in selections) if doc.get("outputs") else (),
        request_id=request_id,
        priority=options.priority,
        timeout_us=options.timeout_us,
        arrival_ms=arrival_ms,
        parameters=options.custom,
    )
    return request, selections


def _input_header(index: int, item: Any) -> tuple[str, str, tuple[int, ...], int | None]:
    if not isinstance(item, dict):
        raise InvalidRequestError(f"inputs[{index}] must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidRequestError(f"inputs[{index}] needs a string 'name'")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidRequestError(f"input '{name}' needs a string 'datatype'")
    if "shape" not in item:
        raise InvalidRequestError(f"input '{name}' needs a 'shape'")
    shape = validation.check_shape_values(name, item["shape"])
    params = item.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidRequestError(f"'parameters' of input '{name}' must be a JSON object")
    return name, datatype, shape, validation.input_binary_size(name, params)


def _requested_outputs(outputs: Any) -> list[tuple[str, dict[str, Any] | None]]:
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise InvalidRequestError("request 'outputs' must be a list")
    requested = []
    for i, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequestError(f"outputs[{i}] must be a JSON object with a string 'name'")
        params = item.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequestError(f"'parameters' of output '{item['name']}' must be a JSON object")
        requested.append((item["name"], params))
    return requested


# ----------------------------------------------------------------------------------- responses


def encode_infer_response(
    response: InferResponse, spec: ModelSpec, selections: Sequence[OutputSelection], request_id: str
) -> tuple[BodyChunks, int | None]:
    """The response body as chunks, and the JSON header's length when binary outputs follow it."""
    outputs = []
    binary: BodyChunks = []
    for selection in selections:
        datatype, array = validation.prepare_output(spec, selection, response.outputs.get(selection.name))
        entry: dict[str, Any] = {"name": selection.name, "datatype": datatype, "shape": array.shape}
        if selection.binary:
            raw = validation.tensor_bytes(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        elif datatype == "BYTES":
            entry["data"] = _bytes_as_text(selection.name, array)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name or spec.name, "model_version": response.model_version}
    if request_id:
        doc["id"] = request_id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return [header], None
    return [header, *binary], len(header)


def _bytes_as_text(name: str, array: Any) -> list[str]:
    try:
        return [item.decode() if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidRequestError(
            f"output '{name}' holds bytes that are not UTF-8 text; request it with parameter binary_data: true"
        ) from None

"""The Open Inference Protocol's request rules, in one place for the REST and gRPC paths.

Both wire formats reduce a request to the same pieces (parameters as Python values; per input a name,
datatype, shape and either raw bytes, JSON values or typed protobuf values; requested outputs with their
parameters), and everything here checks and converts those pieces against the model's ``ModelSpec``.
Every failure is an ``InvalidRequestError`` whose message names the tensor, what was sent and what the
model expects, so a client can fix the request from the message alone.

Numeric tensors are decoded with ``np.frombuffer`` (no copy, no Python loop over elements); BYTES
tensors become object arrays of ``bytes``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squishy.runtime.api import DATATYPES, InternalError, InvalidRequestError, ModelSpec, TensorSpec

# Wire byte order is little-endian whatever the host's.
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"
}
_U32 = struct.Struct("<I")
_UINT64_MAX = 2**64 - 1
_SHARED_MEMORY_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def _quote(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "none"


def _shape_text(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _non_negative_int(value: Any, what: str) -> int:
    if not _is_int(value) or value < 0:
        raise InvalidRequestError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class RequestOptions:
    """Request-level parameters: Triton's reserved ones checked and typed, the rest passed through."""

    priority: int = 0
    timeout_us: int = 0
    binary_data_output: bool = False
    custom: dict[str, Any] = field(default_factory=dict)


def parse_request_parameters(params: Mapping[str, Any] | None) -> RequestOptions:
    """Check reserved request parameters' types; unknown (custom) parameters are accepted and kept."""
    if not params:
        return RequestOptions()
    priority = timeout_us = 0
    binary_data_output = False
    custom: dict[str, Any] = {}
    for key, value in params.items():
        if key == "priority" or key == "timeout":
            if not _is_int(value) or not 0 <= value <= _UINT64_MAX:
                raise InvalidRequestError(f"parameter '{key}' must be an unsigned integer, got {value!r}")
            if key == "priority":
                priority = value
            else:
                timeout_us = value
        elif key == "binary_data_output":
            if not isinstance(value, bool):
                raise InvalidRequestError(f"parameter 'binary_data_output' must be a boolean, got {value!r}")
            binary_data_output = value
        elif key == "sequence_id":
            # squishy has no sequence batcher: a correlation ID would be silently meaningless.
            if value not in (0, ""):
                raise InvalidRequestError("sequence batching is not supported: remove parameter 'sequence_id'")
        elif key == "sequence_start" or key == "sequence_end":
            if not isinstance(value, bool):
                raise InvalidRequestError(f"parameter '{key}' must be a boolean, got {value!r}")
        else:
            custom[key] = value
    return RequestOptions(priority, timeout_us, binary_data_output, custom)


def input_binary_size(name: str, params: Mapping[str, Any] | None) -> int | None:
    """The ``binary_data_size`` of an input (None: its data is inline), after checking the parameters."""
    if not params:
        return None
    size = None
    for key, value in params.items():
        if key == "binary_data_size":
            size = _non_negative_int(value, f"parameter 'binary_data_size' of input '{name}'")
        elif key in _SHARED_MEMORY_PARAMS:
            raise InvalidRequestError(f"input '{name}': shared memory is not supported; send the data in the request")
    return size


@dataclass(frozen=True)
class OutputSelection:
    """One output to return, and how."""

    name: str
    binary: bool  # REST only: raw bytes after the JSON header instead of a JSON "data" list
    class_count: int = 0  # > 0: return the top-k classes as "value:index" strings (classification)


def select_outputs(
    spec: ModelSpec, requested: Sequence[tuple[str, Mapping[str, Any] | None]], binary_default: bool
) -> list[OutputSelection]:
    """The outputs to return: the requested ones (checked), or every output of the model."""
    if not requested:
        return [OutputSelection(t.name, binary_default) for t in spec.outputs]
    known = {t.name for t in spec.outputs}
    seen: set[str] = set()
    selections = []
    for name, params in requested:
        if name not in known:
            raise InvalidRequestError(
                f"unexpected inference output '{name}' for model '{spec.name}'; it has outputs {_quote(known)}"
            )
        if name in seen:
            raise InvalidRequestError(f"output '{name}' is requested more than once")
        seen.add(name)
        binary, class_count = binary_default, 0
        for key, value in (params or {}).items():
            if key == "binary_data":
                if not isinstance(value, bool):
                    raise InvalidRequestError(
                        f"parameter 'binary_data' of output '{name}' must be a boolean, got {value!r}"
                    )
                binary = value
            elif key == "classification":
                class_count = _non_negative_int(value, f"parameter 'classification' of output '{name}'")
            elif key in _SHARED_MEMORY_PARAMS:
                raise InvalidRequestError(f"output '{name}': shared memory is not supported")
        selections.append(OutputSelection(name, binary, class_count))
    return selections


# ------------------------------------------------------------------------------- input checks


def check_shape_values(name: str, shape: Any) -> tuple[int, ...]:
    """A wire shape as a tuple of non-negative ints."""
    if not isinstance(shape, list | tuple) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidRequestError(f"shape of input '{name}' must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def check_inputs(spec: ModelSpec, inputs: Sequence[tuple[str, str, tuple[int, ...]]]) -> None:
    """Names, datatypes and shapes of a request's inputs against the model (no data looked at yet).

    When the model batches (``max_batch_size > 0``) the first dimension is the batch: 1..max_batch_size
    and equal across inputs. Dimensions the model declares as -1 accept any size.
    """
    expected = {t.name: t for t in spec.inputs}
    seen: dict[str, tuple[int, ...]] = {}
    batching = spec.max_batch_size > 0
    for name, datatype, shape in inputs:
        tensor = expected.get(name)
        if tensor is None:
            raise InvalidRequestError(
                f"unexpected inference input '{name}' for model '{spec.name}'; it expects inputs {_quote(expected)}"
            )
        if name in seen:
            raise InvalidRequestError(f"input '{name}' appears more than once")
        seen[name] = shape
        if datatype != tensor.datatype:
            if datatype not in DATATYPES:
                raise InvalidRequestError(
                    f"input '{name}' has unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}"
                )
            raise InvalidRequestError(
                f"input '{name}' has datatype {datatype}, but model '{spec.name}' expects {tensor.datatype}"
            )
        _check_shape(spec, tensor, shape, batching)
    missing = [name for name in expected if name not in seen]
    if missing:
        raise InvalidRequestError(f"model '{spec.name}' expects input(s) {_quote(missing)}, missing from the request")
    if batching and len(seen) > 1:
        batch_sizes = {name: shape[0] for name, shape in seen.items()}
        if len(set(batch_sizes.values())) > 1:
            detail = ", ".join(f"'{n}' has {b}" for n, b in batch_sizes.items())
            raise InvalidRequestError(f"inputs must share one batch size, but {detail}")


def _check_shape(spec: ModelSpec, tensor: TensorSpec, shape: tuple[int, ...], batching: bool) -> None:
    dims = tensor.dims
    full_shape = shape
    expected_text = _shape_text(((-1,) if batching else ()) + dims)
    if batching:
        if len(shape) != len(dims) + 1:
            raise InvalidRequestError(
                f"input '{tensor.name}' has shape {_shape_text(shape)}, but model '{spec.name}' expects "
                f"{expected_text} (the first dimension is the batch)"
            )
        batch = shape[0]
        if not 1 <= batch <= spec.max_batch_size:
            raise InvalidRequestError(
                f"input '{tensor.name}' has batch size {batch}, but model '{spec.name}' accepts 1 to "
                f"{spec.max_batch_size} (max_batch_size)"
            )
        shape = shape[1:]
    elif len(shape) != len(dims):
        raise InvalidRequestError(
            f"input '{tensor.name}' has shape {_shape_text(shape)}, but model '{spec.name}' expects {expected_text}"
        )
    for got, want in zip(shape, dims, strict=True):
        if want != -1 and got != want:
            raise InvalidRequestError(
                f"input '{tensor.name}' has shape {_shape_text(full_shape)}, but model '{spec.name}' expects "
                f"{expected_text}"
            )


# ------------------------------------------------------------------------------ decoding data


def decode_binary(name: str, datatype: str, shape: tuple[int, ...], data: bytes | memoryview) -> np.ndarray:
    """Raw little-endian tensor bytes (BYTES: 4-byte length + bytes per element) → array of ``shape``."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, data, count).reshape(shape)
    dtype = _WIRE_DTYPES[datatype]
    needed = count * dtype.itemsize
    if len(data) != needed:
        raise InvalidRequestError(
            f"input '{name}' carries {len(data)} bytes, but shape {_shape_text(shape)} of {datatype} needs {needed}"
        )
    if datatype == "BOOL" and needed and np.frombuffer(data, np.uint8).max() > 1:
        raise InvalidRequestError(f"BOOL input '{name}' holds bytes other than 0 and 1")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def deserialize_bytes(name: str, data: bytes | memoryview, count: int) -> np.ndarray:
    """BYTES wire format → 1-D object array of ``count`` bytes elements."""
    view = memoryview(data)
    total = len(view)
    out = np.empty(count, dtype=object)
    offset = 0
    unpack = _U32.unpack_from
    for i in range(count):
        if offset + 4 > total:
            raise InvalidRequestError(
                f"BYTES input '{name}' holds {i} elements, but its shape needs {count} (data ends at byte {offset})"
            )
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > total:
            raise InvalidRequestError(
                f"BYTES input '{name}': element {i} declares {length} bytes, but only {total - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != total:
        raise InvalidRequestError(
            f"BYTES input '{name}' has {total - offset} bytes left over after the {count} elements its shape needs"
        )
    return out


def decode_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """An OIP JSON ``data`` value (flat or nested row-major list) → array of ``shape``."""
    count = math.prod(shape)
    if not isinstance(data, list):
        raise InvalidRequestError(f"'data' of input '{name}' must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        items = _flatten(data)
        if len(items) != count:
            raise InvalidRequestError(
                f"input '{name}' has {len(items)} elements of data, but shape {_shape_text(shape)} needs {count}"
            )
        out = np.empty(count, dtype=object)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidRequestError(f"BYTES input '{name}' data must be strings, got {type(item).__name__}")
            out[i] = item.encode()
        return out.reshape(shape)
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError) as exc:  # ragged nesting, or integers beyond 64 bits
        raise InvalidRequestError(f"input '{name}' data is not a rectangular list of numbers: {exc}") from None
    return _from_values(name, datatype, shape, values, count)


def decode_values(name: str, datatype: str, shape: tuple[int, ...], values: Sequence[Any]) -> np.ndarray:
    """Typed values (gRPC ``contents``) → array of ``shape``."""
    count = math.prod(shape)
    if datatype == "BYTES":
        if len(values) != count:
            raise InvalidRequestError(
                f"input '{name}' has {len(values)} elements of data, but shape {_shape_text(shape)} needs {count}"
            )
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    return _from_values(name, datatype, shape, np.asarray(values), count)


def _from_values(name: str, datatype: str, shape: tuple[int, ...], values: np.ndarray, count: int) -> np.ndarray:
    if values.size != count:
        raise InvalidRequestError(
            f"input '{name}' has {values.size} elements of data, but shape {_shape_text(shape)} needs {count}"
        )
    dtype = DATATYPES[datatype]
    kind = values.dtype.kind
    if values.size:
        if dtype.kind == "b":
            ok = kind == "b"
        elif dtype.kind in "iu":
            ok = kind in "iu"
        else:
            ok = kind in "iuf"
        if not ok:
            raise InvalidRequestError(
                f"input '{name}' data must be {_KIND_TEXT[dtype.kind]} for datatype {datatype}, "
                f"got {_kind_of(values)} values"
            )
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = values.min(), values.max()
            if low < info.min or high > info.max:
                raise InvalidRequestError(
                    f"input '{name}' holds values out of range for {datatype} ({info.min}..{info.max})"
                )
    return values.astype(dtype, copy=False).reshape(shape)


_KIND_TEXT = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}


def _kind_of(values: np.ndarray) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "U": "string"}.get(
        values.dtype.kind, "non-numeric"
    )


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


# ------------------------------------------------------------------------------------ outputs


def prepare_output(spec: ModelSpec, selection: OutputSelection, array: Any) -> tuple[str, np.ndarray]:
    """An output as it goes on the wire: (datatype, array in that datatype), classification applied."""
    if array is None:
        raise InternalError(f"model '{spec.name}' did not produce output '{selection.name}'")
    array = np.asarray(array)
    if selection.class_count:
        return "BYTES", classify(spec, selection, array)
    tensor = next((t for t in spec.outputs if t.name == selection.name), None)
    datatype = tensor.datatype if tensor is not None else datatype_of(array)
    if datatype == "BYTES":
        if array.dtype != object:
            array = _to_object_bytes(array)
        return datatype, array
    dtype = DATATYPES[datatype]
    if array.dtype != dtype:
        if array.dtype == object or array.dtype.kind in "SU":
            raise InternalError(
                f"model '{spec.name}' produced non-numeric data for {datatype} output '{selection.name}'"
            )
        array = array.astype(dtype)
    return datatype, array


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object, str and bytes arrays are BYTES)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype == array.dtype:
            return name
    raise InternalError(f"numpy dtype {array.dtype} has no OIP datatype")


def _to_object_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1).tolist()):
        flat[i] = item.encode() if isinstance(item, str) else bytes(item)
    return out


def classify(spec: ModelSpec, selection: OutputSelection, array: np.ndarray) -> np.ndarray:
    """Triton's classification extension: per batch item, the top-k "value:index" strings."""
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InvalidRequestError(f"classification needs a numeric output, but '{selection.name}' is not")
    batched = spec.max_batch_size > 0 and array.ndim > 0
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(selection.class_count, rows.shape[1])
    # Stable sort of the negated scores: ties keep the lower class index first.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for j, index in enumerate(order[r]):
            out[r, j] = f"{float(rows[r, index]):f}:{int(index)}".encode()
    return out if batched else out.reshape(k)


def serialize_bytes(array: np.ndarray) -> bytes:
    """Object array of bytes/str → BYTES wire format (4-byte little-endian length + bytes per element)."""
    parts = []
    pack = _U32.pack
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else (item.encode() if isinstance(item, str) else bytes(item))
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def tensor_bytes(datatype: str, array: np.ndarray) -> bytes | memoryview:
    """An output's raw wire bytes, without a copy when the array is already contiguous little-endian."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    array = np.ascontiguousarray(array, dtype=_WIRE_DTYPES[datatype])
    if array.size == 0:
        return b""
    return memoryview(array.reshape(-1)).cast("B")

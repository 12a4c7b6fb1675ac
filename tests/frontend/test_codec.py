"""The wire rules without a server: tensor decoding, parameter types, compression limits."""

from __future__ import annotations

import dataclasses
import gzip
import zlib

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from squishy.frontend import codec, validation
from squishy.runtime.api import DATATYPES, InvalidRequestError, PayloadTooLargeError, TensorSpec
from tests.frontend.conftest import AFFINE


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_binary_roundtrip_every_numeric_datatype(datatype: str) -> None:
    values = (np.arange(6) % 2).astype(DATATYPES[datatype]).reshape(2, 3)
    decoded = validation.decode_binary("t", datatype, (2, 3), values.tobytes())
    np.testing.assert_array_equal(decoded, values)
    assert decoded.dtype == DATATYPES[datatype]
    assert bytes(validation.tensor_bytes(datatype, decoded)) == values.tobytes()


def test_numeric_decoding_does_not_copy() -> None:
    body = np.arange(4, dtype=np.float32).tobytes()
    decoded = validation.decode_binary("x", "FP32", (1, 4), memoryview(body))
    assert not decoded.flags.owndata


def test_bytes_wire_format_matches_tritonclient() -> None:
    values = np.array([[b"a", b""], [b"\x00\xff", "\u00e9".encode()]], dtype=object)
    wire = serialize_byte_tensor(values).item()
    decoded = validation.decode_binary("s", "BYTES", (2, 2), wire)
    assert decoded.tolist() == values.tolist()
    assert validation.serialize_bytes(decoded) == wire
    assert deserialize_bytes_tensor(validation.serialize_bytes(decoded)).tolist() == values.ravel().tolist()
    with pytest.raises(InvalidRequestError, match="holds 3 elements, but its shape needs 4"):
        validation.decode_binary("s", "BYTES", (4,), serialize_byte_tensor(values.ravel()[:3]).item())
    with pytest.raises(InvalidRequestError, match="2 bytes left over"):
        validation.decode_binary("s", "BYTES", (1,), serialize_byte_tensor(values.ravel()[:1]).item() + b"xx")


def test_json_values_are_checked_for_kind_and_range() -> None:
    assert validation.decode_json("u", "UINT8", (2,), [0, 255]).tolist() == [0, 255]
    with pytest.raises(InvalidRequestError, match="out of range for UINT8"):
        validation.decode_json("u", "UINT8", (2,), [0, 300])
    with pytest.raises(InvalidRequestError, match="must be integers for datatype INT32, got floating-point"):
        validation.decode_json("i", "INT32", (1,), [1.5])
    with pytest.raises(InvalidRequestError, match="must be booleans"):
        validation.decode_json("b", "BOOL", (1,), [1])
    with pytest.raises(InvalidRequestError, match="must be strings"):
        validation.decode_json("s", "BYTES", (1,), [1])
    assert validation.decode_json("b", "BOOL", (2,), [True, False]).tolist() == [True, False]
    with pytest.raises(InvalidRequestError, match="bytes other than 0 and 1"):
        validation.decode_binary("b", "BOOL", (1,), b"\x07")


def test_reserved_parameter_types() -> None:
    options = validation.parse_request_parameters({"priority": 1, "timeout": 0, "custom": [1], "triton_x": 1})
    assert (options.priority, options.timeout_us, options.custom) == (1, 0, {"custom": [1], "triton_x": 1})
    for params in ({"priority": True}, {"timeout": -1}, {"timeout": 2**64}, {"binary_data_output": "true"}):
        with pytest.raises(InvalidRequestError):
            validation.parse_request_parameters(params)
    assert validation.parse_request_parameters({"sequence_id": 0, "sequence_start": False}).custom == {}


def test_decompression_is_bounded() -> None:
    data = b"{}" * 1000
    assert codec.decode_content(gzip.compress(data), "gzip", 4096) == data
    assert codec.decode_content(zlib.compress(data), "deflate", 4096) == data
    assert codec.decode_content(gzip.compress(data), "deflate", 4096) == data  # some clients mean gzip
    with pytest.raises(PayloadTooLargeError):
        codec.decode_content(gzip.compress(data), "gzip", 1999)


def test_response_encoding_negotiation() -> None:
    assert codec.pick_response_encoding("gzip, deflate, br") == "gzip"
    assert codec.pick_response_encoding("deflate") == "deflate"
    assert codec.pick_response_encoding("gzip;q=0, deflate;q=0.5") == "deflate"
    assert codec.pick_response_encoding("br") is None
    assert codec.pick_response_encoding(None) is None


def test_batch_sizes_must_agree_across_inputs() -> None:
    spec = dataclasses.replace(AFFINE, inputs=(*AFFINE.inputs, TensorSpec("w", "FP32", (-1,))))
    validation.check_inputs(spec, [("x", "FP32", (2, 4)), ("w", "FP32", (2, 7))])
    with pytest.raises(InvalidRequestError, match="share one batch size, but 'x' has 2, 'w' has 3"):
        validation.check_inputs(spec, [("x", "FP32", (2, 4)), ("w", "FP32", (3, 7))])
    with pytest.raises(InvalidRequestError, match="appears more than once"):
        validation.check_inputs(spec, [("x", "FP32", (2, 4)), ("x", "FP32", (2, 4))])

"""Hypothesis fuzzing of gRPC ModelInfer (unary and streaming) against a real server on loopback.

Generated requests vary the model and version, the shapes, every typed contents field, the count and
sizes of raw_input_contents and parameters of every kind. Each must be answered: a response or a status
code, never UNKNOWN or INTERNAL (those would mean a client error escaped as a server fault), and the
server must still serve a valid request afterwards.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.frontend.fuzzing import DATATYPES, FUZZ, RESERVED_PARAMS

CONTENTS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
CLIENT_ERRORS_ONLY = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
CASES: collections.Counter[str] = collections.Counter()
CODES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module")
def stub(grpc_url: str) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print(f"\ngRPC fuzz cases: {dict(CASES)} total={sum(CASES.values())}; answers: {dict(CODES)}")


def valid_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    return request


def assert_still_serving(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(valid_request(), timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1, 3, 5, 7]


# --------------------------------------------------------------------------------- strategies

param_keys = (
    st.sampled_from(["priority", "timeout", "binary_data_size", "binary_data", "binary_data_output", "sequence_id"])
    | st.text(max_size=6)
).filter(lambda k: k not in RESERVED_PARAMS)
param_kinds = st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param", None])
param_values = {
    "bool_param": st.booleans(),
    "int64_param": st.integers(-(2**63), 2**63 - 1),
    "string_param": st.text(max_size=8),
    "double_param": st.floats(),
    "uint64_param": st.integers(0, 2**64 - 1),
}


@st.composite
def fill_parameters(draw: st.DrawFn, target) -> None:
    for key in draw(st.lists(param_keys, max_size=3, unique=True)):
        kind = draw(param_kinds)
        if kind is None:
            target[key].Clear()  # a parameter with no value set
        else:
            setattr(target[key], kind, draw(param_values[kind]))


dims = st.integers(-3, 9) | st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -(2**63)])
shapes = st.lists(dims, max_size=5) | st.sampled_from([[1, 4], [2, 4], [0, 4], [3], [1], []])


@st.composite
def infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["affine", "affine", "affine", "echo", "echo", "nope", "", "AFFINE"])),
        model_version=draw(st.sampled_from(["", "", "", "1", "2", "0", "-1"])),
        id=draw(st.text(max_size=6)),
    )
    draw(fill_parameters(request.parameters))
    n_inputs = draw(st.sampled_from([1, 1, 1, 0, 2, 3]))
    for _ in range(n_inputs):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["x", "x", "text", "text", "y", ""]) | st.text(max_size=4)),
            datatype=draw(st.sampled_from(["FP32", "FP32", "BYTES", "BYTES", *DATATYPES, "", "fp32", "INT128"])),
            shape=draw(shapes),
        )
        draw(fill_parameters(tensor.parameters))
        if draw(st.booleans()):
            fields = draw(st.lists(st.sampled_from(sorted(CONTENTS)), max_size=2, unique=True))
            for field in fields:
                getattr(tensor.contents, field).extend(draw(st.lists(CONTENTS[field], max_size=12)))
            if not fields and draw(st.booleans()):
                tensor.contents.SetInParent()  # contents present but empty
    raw_mode = draw(st.integers(0, 3))
    if raw_mode:
        count = draw(st.sampled_from([n_inputs, n_inputs, n_inputs + 1, max(n_inputs - 1, 0)]))
        for i in range(count):
            tensor = request.inputs[i] if i < n_inputs else None
            exact = b""
            if tensor is not None and all(0 <= d < 64 for d in tensor.shape):
                exact = bytes(int(np.prod(tensor.shape, dtype=np.int64)) * 4)  # right for 4-byte types
            request.raw_input_contents.append(
                draw(st.sampled_from([exact, exact[:-1], exact + b"\x00", b""]) | st.binary(max_size=40))
            )
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=draw(st.sampled_from(["y", "neg", "echo", "length", "z", ""])))
        draw(fill_parameters(output.parameters))
    return request


def record(kind: str, code: grpc.StatusCode | None) -> None:
    CASES[kind] += 1
    CODES["OK" if code is None else code.name] += 1
    assert code not in CLIENT_ERRORS_ONLY, code


# -------------------------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=600)
@given(request=infer_requests())
def test_fuzz_grpc_model_infer(stub: service_pb2_grpc.GRPCInferenceServiceStub, request) -> None:
    try:
        stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.details(), exc  # every error names its reason
        record("unary", exc.code())
    else:
        record("unary", None)


@settings(FUZZ, max_examples=60)
@given(requests=st.lists(infer_requests(), min_size=1, max_size=5))
def test_fuzz_grpc_stream_infer(stub: service_pb2_grpc.GRPCInferenceServiceStub, requests) -> None:
    """A stream answers every request in order of arrival, errors in-band, and keeps going after them."""
    responses = list(stub.ModelStreamInfer(iter([*requests, valid_request()]), timeout=10))
    CASES["stream"] += len(requests)
    assert len(responses) == len(requests) + 1
    assert any(not r.error_message and r.infer_response.model_name == "affine" for r in responses)
    for response in responses:
        assert not response.error_message.startswith("internal error"), response.error_message


def test_grpc_still_serving_after_fuzzing(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert_still_serving(stub)
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready

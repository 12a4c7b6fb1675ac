"""The gRPC API with tritonclient.grpc and plain grpcio stubs."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.frontend.conftest import OnnxTestService

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def client(grpc_url: str) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(grpc_url) as grpc_client:
        yield grpc_client


@pytest.fixture(scope="module")
def stub(grpc_url: str) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def affine_input(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def affine_request(x: np.ndarray = X, request_id: str = "", **params) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="affine", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    for key, value in params.items():
        request.parameters[key].string_param = value
    return request


def test_health_metadata_config(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("affine") and client.is_model_ready("affine", "1")
    server = client.get_server_metadata()
    assert server.name == "squishy" and "binary_tensor_data" in server.extensions
    metadata = client.get_model_metadata("affine")
    assert list(metadata.versions) == ["1"] and list(metadata.inputs[0].shape) == [-1, 4]
    config = client.get_model_config("affine").config
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [4]


def test_infer_raw_tensors(client: triton_grpc.InferenceServerClient) -> None:
    result = client.infer("affine", [affine_input(X)], request_id="g-1")
    assert result.get_response().id == "g-1"
    np.testing.assert_array_equal(result.as_numpy("y"), X * 2 + 1)
    np.testing.assert_array_equal(result.as_numpy("neg"), -X)
    only_neg = client.infer("affine", [affine_input(X)], outputs=[triton_grpc.InferRequestedOutput("neg")])
    assert [o.name for o in only_neg.get_response().outputs] == ["neg"]


def test_bytes_tensors(client: triton_grpc.InferenceServerClient) -> None:
    texts = np.array([b"one", b"", b"\x00\x01"], dtype=object)
    tensor = triton_grpc.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer("echo", [tensor])
    assert result.as_numpy("echo").tolist() == texts.tolist()
    assert result.as_numpy("length").tolist() == [3, 0, 2]


def test_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="affine")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [3, 5, 7, 9]

    request = service_pb2.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"ab", b"c"])
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["echo", "length"]
    assert np.frombuffer(response.raw_output_contents[1], np.int32).tolist() == [2, 1]


def test_errors_carry_status_codes(
    client: triton_grpc.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [affine_input(X)])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.infer("affine", [affine_input(np.zeros((2, 3), np.float32))])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == "input 'x' has shape [2,3], but model 'affine' expects [-1,4]"

    cases = [
        (affine_request(fail="unavailable"), grpc.StatusCode.UNAVAILABLE, "cannot meet its deadline"),
        (affine_request(fail="internal"), grpc.StatusCode.INTERNAL, "executor crashed"),
        (affine_request(X[:, :3].copy()), grpc.StatusCode.INVALID_ARGUMENT, "expects [-1,4]"),
    ]
    mismatched = affine_request()
    mismatched.raw_input_contents.append(b"extra")
    cases.append((mismatched, grpc.StatusCode.INVALID_ARGUMENT, "2 raw_input_contents for 1 inputs"))
    short = affine_request()
    short.raw_input_contents[0] = X.tobytes()[:-1]
    cases.append((short, grpc.StatusCode.INVALID_ARGUMENT, "carries 31 bytes, but shape [2,4] of FP32 needs 32"))
    negative = affine_request()
    negative.parameters["priority"].int64_param = -3
    cases.append((negative, grpc.StatusCode.INVALID_ARGUMENT, "'priority' must be an unsigned integer"))
    half = service_pb2.ModelInferRequest(model_name="affine")
    half.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    cases.append((half, grpc.StatusCode.INVALID_ARGUMENT, "has 0 elements of data, but shape [1,4] needs 4"))
    for request, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == code
        assert fragment in info.value.details()


def test_parameters_reach_the_core(client: triton_grpc.InferenceServerClient, service: OnnxTestService) -> None:
    client.infer("affine", [affine_input(X)], priority=1, timeout=2500, parameters={"tenant": "red"})
    request = service.requests[-1]
    assert (request.priority, request.timeout_us, dict(request.parameters)) == (1, 2500, {"tenant": "red"})


def test_statistics_and_repository(client: triton_grpc.InferenceServerClient) -> None:
    client.infer("affine", [affine_input(X)])
    stats = client.get_inference_statistics("affine").model_stats
    assert stats[0].name == "affine" and stats[0].inference_stats.success.count >= 1
    assert {s.name for s in client.get_inference_statistics().model_stats} == {"affine", "echo"}
    index = client.get_model_repository_index().models
    assert {(m.name, m.state) for m in index} == {("affine", "READY"), ("echo", "READY")}
    try:
        client.unload_model("echo")
        assert not client.is_model_ready("echo")
        assert [m.name for m in client.get_model_repository_index().models if m.state == "READY"] == ["affine"]
    finally:
        client.load_model("echo")
    assert client.is_model_ready("echo")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.load_model("nope")


def test_unimplemented_rpcs(client: triton_grpc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "not supported by squishy" in info.value.message()


def test_tritonclient_stream(client: triton_grpc.InferenceServerClient) -> None:
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            client.async_stream_infer("affine", [affine_input(X + i)], request_id=str(i))
        client.async_stream_infer("nope", [affine_input(X)], request_id="bad")
        client.async_stream_infer("affine", [affine_input(X)], request_id="after-error")
        answers = [results.get(timeout=10) for _ in range(7)]
    finally:
        client.stop_stream()
    good = {r.get_response().id: r for r, e in answers if e is None}
    errors = [e for _, e in answers if e is not None]
    assert set(good) == {"0", "1", "2", "3", "4", "after-error"}
    np.testing.assert_array_equal(good["3"].as_numpy("y"), (X + 3) * 2 + 1)
    assert len(errors) == 1 and "unknown model 'nope'" in errors[0].message()


def test_grpcio_stream_keeps_going_after_errors(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    bad = affine_request(request_id="bad")
    bad.inputs[0].datatype = "INT8"
    requests = [affine_request(request_id="a"), bad, affine_request(request_id="b", fail="unavailable")]
    requests.append(affine_request(request_id="c"))
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert len(responses) == 4
    ok = sorted(r.infer_response.id for r in responses if not r.error_message)
    errors = sorted(r.error_message for r in responses if r.error_message)
    assert ok == ["a", "c"]
    assert errors == [
        "input 'x' has datatype INT8, but model 'affine' expects FP32",
        "request to 'affine' cannot meet its deadline",
    ]


def test_large_message(client: triton_grpc.InferenceServerClient) -> None:
    texts = np.array([b"z" * (6 << 20)], dtype=object)  # over gRPC's 4 MiB default limit
    tensor = triton_grpc.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer("echo", [tensor], outputs=[triton_grpc.InferRequestedOutput("length")])
    assert result.as_numpy("length").tolist() == [6 << 20]

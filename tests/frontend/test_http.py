"""The REST API with real clients: tritonclient.http for what users run, httpx for raw bodies."""

from __future__ import annotations

import gzip
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.frontend.conftest import MAX_BODY_BYTES, OnnxTestService


@pytest.fixture(scope="module")
def client(http_url: str) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(http_url.removeprefix("http://"))


@pytest.fixture(scope="module")
def raw(http_url: str) -> httpx.Client:
    with httpx.Client(base_url=http_url, timeout=10) as raw_client:
        yield raw_client


def affine_input(x: np.ndarray, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


X = np.arange(8, dtype=np.float32).reshape(2, 4)


# ------------------------------------------------------------------------------- tritonclient


def test_health_and_server_metadata(client: triton_http.InferenceServerClient, raw: httpx.Client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    live, ready = raw.get("/v2/health/live"), raw.get("/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    metadata = client.get_server_metadata()
    assert metadata["name"] == "squishy"
    assert set(metadata["extensions"]) >= {"binary_tensor_data", "model_repository", "statistics"}
    assert "system_shared_memory" not in metadata["extensions"]


def test_model_metadata_config_ready(client: triton_http.InferenceServerClient, raw: httpx.Client) -> None:
    metadata = client.get_model_metadata("affine")
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["y", "neg"]
    assert client.get_model_metadata("echo")["inputs"][0]["shape"] == [-1]  # no batch dim: echo does not batch
    assert client.get_model_metadata("affine", model_version="1")["name"] == "affine"

    config = client.get_model_config("affine")
    assert config["max_batch_size"] == 8  # a JSON number, as perf_analyzer reads it
    assert config["input"][0] == {**config["input"][0], "name": "x", "data_type": "TYPE_FP32", "dims": [4]}
    assert "dynamic_batching" in config

    assert client.is_model_ready("affine") and client.is_model_ready("affine", "1")
    body = raw.get("/v2/models/affine/ready").json()
    assert body == {"name": "affine", "ready": True}


def test_binary_infer_echoes_id_and_computes(client: triton_http.InferenceServerClient) -> None:
    result = client.infer("affine", [affine_input(X)], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    np.testing.assert_array_equal(result.as_numpy("y"), X * 2 + 1)
    np.testing.assert_array_equal(result.as_numpy("neg"), -X)


def test_json_infer_and_requested_outputs(client: triton_http.InferenceServerClient) -> None:
    outputs = [triton_http.InferRequestedOutput("neg", binary_data=False)]
    result = client.infer("affine", [affine_input(X, binary=False)], outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["neg"]
    assert response["outputs"][0]["data"] == (-X).ravel().tolist()
    np.testing.assert_array_equal(result.as_numpy("neg"), -X)
    assert result.as_numpy("y") is None


def test_mixed_binary_and_json_outputs(client: triton_http.InferenceServerClient) -> None:
    outputs = [
        triton_http.InferRequestedOutput("y", binary_data=True),
        triton_http.InferRequestedOutput("neg", binary_data=False),
    ]
    result = client.infer("affine", [affine_input(X)], outputs=outputs)
    kinds = {o["name"]: ("data" in o) for o in result.get_response()["outputs"]}
    assert kinds == {"y": False, "neg": True}
    np.testing.assert_array_equal(result.as_numpy("y"), X * 2 + 1)
    np.testing.assert_array_equal(result.as_numpy("neg"), -X)


def test_bytes_tensors_binary_and_json(client: triton_http.InferenceServerClient) -> None:
    texts = np.array([b"hello", b"", "snowman \u2603".encode(), b"\x00\xffraw"], dtype=object)
    tensor = triton_http.InferInput("text", [4], "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer("echo", [tensor])
    assert result.as_numpy("echo").tolist() == texts.tolist()
    assert result.as_numpy("length").tolist() == [5, 0, 11, 5]

    utf8 = np.array(["a", "bc"], dtype=object)
    tensor = triton_http.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(utf8, binary_data=False)
    outputs = [triton_http.InferRequestedOutput("echo", binary_data=False)]
    result = client.infer("echo", [tensor], outputs=outputs)
    assert result.get_response()["outputs"][0]["data"] == ["a", "bc"]


def test_gzip_and_deflate_bodies_both_ways(client: triton_http.InferenceServerClient) -> None:
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "affine",
            [affine_input(x)],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("y"), x * 2 + 1)


def test_gzip_response_when_accepted(raw: httpx.Client) -> None:
    text = "squishy " * 500
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    response = raw.post("/v2/models/echo/infer", json=body, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < len(text)  # httpx inflated it; the wire carried less
    assert response.json()["outputs"][0]["data"] == [text]
    # Small answers are not worth compressing.
    response = raw.post("/v2/models/affine/infer", json=json_x(), headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers


def test_statistics(client: triton_http.InferenceServerClient) -> None:
    client.infer("affine", [affine_input(X)])
    stats = client.get_inference_statistics("affine")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("affine", "1")]
    inference = stats[0]["inference_stats"]
    assert inference["success"]["count"] >= 1 and inference["success"]["ns"] > 0
    assert set(inference) >= {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"}
    assert stats[0]["inference_count"] >= 2 and isinstance(stats[0]["last_inference"], int)
    assert any(b["batch_size"] == 2 for b in stats[0]["batch_stats"])
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"affine", "echo"}
    assert client.get_inference_statistics("affine", "1")["model_stats"][0]["name"] == "affine"


def test_repository_index_load_unload(
    client: triton_http.InferenceServerClient, raw: httpx.Client, service: OnnxTestService
) -> None:
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} == {("affine", "READY"), ("echo", "READY")}
    try:
        client.unload_model("echo")
        assert not client.is_model_ready("echo")
        assert raw.get("/v2/models/echo/ready").json() == {"name": "echo", "ready": False}
        assert not client.is_server_ready()
        ready = raw.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
        only_ready = raw.post("/v2/repository/index", json={"ready": True}).json()
        assert [m["name"] for m in only_ready] == ["affine"]
        tensor = triton_http.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"x"], dtype=object))
        with pytest.raises(InferenceServerException, match="not loaded"):
            client.infer("echo", [tensor])
    finally:
        client.load_model("echo")
    assert client.is_model_ready("echo")
    assert raw.post("/v2/repository/index", content=b"").status_code == 200  # empty body allowed


def test_unknown_model_and_version_are_404(client: triton_http.InferenceServerClient, raw: httpx.Client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [affine_input(X)])
    assert info.value.status() == "404" and "nope" in info.value.message()
    assert raw.get("/v2/models/nope").status_code == 404
    assert raw.get("/v2/models/affine/versions/9").status_code == 404
    assert raw.get("/v2/models/nope/config").json() == {"error": "unknown model 'nope'"}
    assert raw.get("/v2/models/nope/ready").json() == {"error": "unknown model 'nope'"}
    assert raw.get("/v2/models/nope/ready").status_code == 404
    assert raw.get("/v2/models/affine/versions/9/ready").status_code == 404
    assert not client.is_model_ready("nope")  # tritonclient: any status but 200 is "not ready"


def test_wrong_shape_is_400_with_expected_shape(client: triton_http.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("affine", [affine_input(np.zeros((2, 3), np.float32))])
    assert info.value.status() == "400"
    assert info.value.message() == "input 'x' has shape [2,3], but model 'affine' expects [-1,4]"
    with pytest.raises(InferenceServerException, match="batch size 9, but model 'affine' accepts 1 to 8"):
        client.infer("affine", [affine_input(np.zeros((9, 4), np.float32))])


def test_errors_from_the_core_map_to_status(client: triton_http.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("affine", [affine_input(X)], parameters={"fail": "unavailable"})
    assert info.value.status() == "503" and "deadline" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("affine", [affine_input(X)], parameters={"fail": "internal"})
    assert info.value.status() == "500" and "executor crashed" in info.value.message()


def test_reserved_and_custom_parameters_reach_the_core(
    client: triton_http.InferenceServerClient, service: OnnxTestService
) -> None:
    client.infer("affine", [affine_input(X)], priority=2, timeout=5000, parameters={"tenant": "blue", "k": 3})
    request = service.requests[-1]
    assert (request.priority, request.timeout_us) == (2, 5000)
    assert request.parameters == {"tenant": "blue", "k": 3}
    assert request.arrival_ms > 0


# ------------------------------------------------------------------------------------ raw HTTP


def post_infer(raw: httpx.Client, body: bytes | dict, headers: dict | None = None, model: str = "affine"):
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return raw.post(f"/v2/models/{model}/infer", content=content, headers=headers or {})


def json_x(**overrides) -> dict:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    tensor.update(overrides)
    return {"inputs": [tensor]}


def binary_body(x: np.ndarray, size: int | None = None) -> tuple[bytes, dict]:
    raw_x = x.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw_x) if size is None else size},
                }
            ]
        }
    ).encode()
    return header + raw_x, {"Inference-Header-Content-Length": str(len(header))}


BAD_REQUESTS = [
    # (body, headers, expected status, a fragment of the message)
    (b"{not json", None, 400, "malformed JSON"),
    (b"[1, 2]", None, 400, "must be a JSON object"),
    (b"{}", None, 400, "'inputs' list"),
    ({"inputs": [{"name": "x"}]}, None, 400, "needs a string 'datatype'"),
    (json_x(name="q"), None, 400, "unexpected inference input 'q' for model 'affine'"),
    ({"inputs": []}, None, 400, "expects input(s) 'x', missing"),
    (json_x(datatype="INT32"), None, 400, "has datatype INT32, but model 'affine' expects FP32"),
    (json_x(datatype="FLOAT7"), None, 400, "unknown datatype 'FLOAT7'"),
    (json_x(shape=[1, 5]), None, 400, "expects [-1,4]"),
    (json_x(shape=[1, -4]), None, 400, "non-negative integers"),
    (json_x(shape=[0, 4], data=[]), None, 400, "batch size 0"),
    (json_x(data=[1, 2, 3]), None, 400, "has 3 elements of data, but shape [1,4] needs 4"),
    (json_x(data=["a", "b", "c", "d"]), None, 400, "must be numbers for datatype FP32, got string"),
    (json_x(data=[[1, 2], [3]]), None, 400, "not a rectangular list"),
    (json_x(data=None), None, 400, "'data' of input 'x' must be a list, got NoneType"),
    (json_x(data=[1, 2, None, 4]), None, 400, "got non-numeric values"),
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, None, 400, "neither 'data' nor"),
    ({**json_x(), "parameters": {"priority": -1}}, None, 400, "'priority' must be an unsigned integer"),
    ({**json_x(), "parameters": {"priority": "high"}}, None, 400, "'priority' must be an unsigned integer"),
    ({**json_x(), "parameters": {"timeout": 1.5}}, None, 400, "'timeout' must be an unsigned integer"),
    ({**json_x(), "parameters": {"binary_data_output": 1}}, None, 400, "'binary_data_output' must be a boolean"),
    ({**json_x(), "parameters": {"sequence_id": 7}}, None, 400, "sequence batching is not supported"),
    ({**json_x(), "parameters": []}, None, 400, "'parameters' must be a JSON object"),
    ({**json_x(), "id": 5}, None, 400, "'id' must be a string"),
    ({**json_x(), "outputs": [{"name": "zz"}]}, None, 400, "unexpected inference output 'zz'"),
    ({**json_x(), "outputs": [{"name": "y"}, {"name": "y"}]}, None, 400, "requested more than once"),
    (
        {**json_x(), "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
        None,
        400,
        "'binary_data' of output 'y' must be a boolean",
    ),
    (
        {**json_x(), "outputs": [{"name": "y", "parameters": {"classification": "3"}}]},
        None,
        400,
        "'classification' of output 'y' must be a non-negative integer",
    ),
    (
        json_x(parameters={"binary_data_size": "16"}),
        None,
        400,
        "'binary_data_size' of input 'x' must be a non-negative integer",
    ),
    (json_x(parameters={"shared_memory_region": "r"}), None, 400, "shared memory is not supported"),
    (*binary_body(np.ones((1, 4), np.float32), size=12), 400, "add up to 12 bytes, but 16 bytes follow"),
    (binary_body(np.ones((1, 4), np.float32))[0][:-3], binary_body(np.ones((1, 4), np.float32))[1], 400, "13 bytes"),
    (binary_body(np.ones((1, 4), np.float32))[0], None, 400, "need the Inference-Header-Content-Length header"),
    (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "but the body has 2 bytes"),
    (b"{}", {"Inference-Header-Content-Length": "ten"}, 400, "must be an integer"),
    (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    (gzip.compress(b'{"inputs": []}')[:-6], {"Content-Encoding": "gzip"}, 400, "truncated gzip"),
    (b"{}", {"Content-Encoding": "br"}, 415, "unsupported Content-Encoding 'br'"),
]


@pytest.mark.parametrize(("body", "headers", "status", "fragment"), BAD_REQUESTS)
def test_bad_request_has_precise_error(raw: httpx.Client, body, headers, status: int, fragment: str) -> None:
    response = post_infer(raw, body, headers)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_wrong_bytes_element_framing(raw: httpx.Client) -> None:
    element = struct.pack("<I", 10) + b"short"
    header = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    ).encode()
    response = post_infer(raw, header + element, {"Inference-Header-Content-Length": str(len(header))}, "echo")
    assert response.status_code == 400
    assert "element 0 declares 10 bytes, but only 5 remain" in response.json()["error"]


def test_unknown_custom_parameters_are_accepted(raw: httpx.Client) -> None:
    body = {**json_x(), "parameters": {"my_flag": True, "nested": {"a": 1}}}
    body["outputs"] = [{"name": "y", "parameters": {"my_output_option": 1}}]
    response = post_infer(raw, body)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def test_nested_json_data_and_integer_values_for_floats(raw: httpx.Client) -> None:
    response = post_infer(raw, json_x(shape=[2, 4], data=[[1, 2, 3, 4], [5, 6, 7, 8.5]]))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [2, 4]
    assert response.json()["outputs"][0]["data"][-1] == 18.0


def test_classification(raw: httpx.Client) -> None:
    body = {**json_x(data=[4, 1, 3, 2]), "outputs": [{"name": "y", "parameters": {"classification": 2}}]}
    output = post_infer(raw, body).json()["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1, 2])
    assert output["data"] == ["9.000000:0", "7.000000:2"]


def test_oversized_body_is_413_without_reading_it(raw: httpx.Client) -> None:
    too_big = b"x" * (MAX_BODY_BYTES + 1)
    response = post_infer(raw, too_big)
    assert response.status_code == 413
    assert "exceeds the 1048576-byte limit" in response.json()["error"]
    # A gzip bomb: tiny on the wire, over the limit once inflated.
    bomb = gzip.compress(b"\0" * (MAX_BODY_BYTES * 4))
    response = post_infer(raw, bomb, {"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decompressed" in response.json()["error"]


def test_chunked_upload_over_the_limit_is_413(raw: httpx.Client) -> None:
    def chunks():
        for _ in range(20):
            yield b"y" * (MAX_BODY_BYTES // 10)

    response = raw.post("/v2/models/affine/infer", content=chunks())
    assert response.status_code == 413


def test_paths_and_methods(raw: httpx.Client) -> None:
    assert raw.get("/v2/models/affine/infer").status_code == 405
    assert raw.get("/v2/models/affine/infer").headers["allow"] == "POST"
    assert raw.post("/v2/health/live").status_code == 405
    assert raw.get("/v2/repository/index").status_code == 405
    assert raw.get("/v2/nothing/here").status_code == 404
    assert raw.get("/v3").status_code == 404
    assert raw.get("/").json()["error"].startswith("unknown path")
    assert raw.get("/v2/models/affine/trace/setting").status_code == 404
    assert raw.get("/v2").json()["name"] == "squishy"
    assert raw.get("/v2/models/stats").status_code == 200
    assert raw.get("/v2/models/affine/versions/1/stats").status_code == 200
    assert raw.get("/v2/models/affine/versions/1/config").json()["name"] == "affine"
    assert raw.post("/v2/repository/models/nope/load").status_code == 404

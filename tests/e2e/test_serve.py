"""``squishy serve`` end to end, driven by the clients users already have."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from .conftest import CONTROL_TOKEN, MODELS, Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def digits_batch() -> np.ndarray:
    return load_digits().data[:16].astype(np.float32)


def reference_outputs(repository, pixels: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"pixels": pixels}), strict=True))


def test_health_bodies_for_kserve_clients(server: Server):
    live = httpx.get(f"{server.http_url}/v2/health/live")
    ready = httpx.get(f"{server.http_url}/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    metadata = httpx.get(f"{server.http_url}/v2").json()
    assert metadata["name"] == "squishy"
    assert "binary_tensor_data" in metadata["extensions"]


def test_http_binary_and_json_tensors_match_onnx_runtime(server: Server, example_repository, digits_batch):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    expected = reference_outputs(example_repository, digits_batch)
    for binary in (True, False):
        tensor = httpclient.InferInput("pixels", list(digits_batch.shape), "FP32")
        tensor.set_data_from_numpy(digits_batch, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput("label", binary_data=binary)]
        result = client.infer("digits", [tensor], outputs=wanted, request_id="r-1")
        assert np.array_equal(result.as_numpy("label"), expected["label"])
        assert result.as_numpy("probabilities") is None  # only what was asked for comes back
        assert result.get_response()["id"] == "r-1"
    tensor = httpclient.InferInput("pixels", list(digits_batch.shape), "FP32")
    tensor.set_data_from_numpy(digits_batch)
    result = client.infer("digits", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-5, atol=1e-6)
    # The labels are right, too: the model was trained on this data set.
    assert (result.as_numpy("label").ravel() == load_digits().target[:16]).mean() >= 0.9


def test_grpc_raw_contents_match_onnx_runtime(server: Server, example_repository, digits_batch):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    tensor = grpcclient.InferInput("pixels", list(digits_batch.shape), "FP32")
    tensor.set_data_from_numpy(digits_batch)
    result = client.infer("digits", [tensor], outputs=[grpcclient.InferRequestedOutput("label")])
    assert np.array_equal(result.as_numpy("label"), reference_outputs(example_repository, digits_batch)["label"])
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"][0]["shape"] == ["-1", "64"]
    config = client.get_model_config("digits", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == set(MODELS)
    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 16


def test_metadata_config_ready_index_and_statistics_over_http(server: Server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for model in MODELS:
        assert client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        assert metadata["inputs"][0]["shape"][0] == -1
        assert client.get_model_config(model)["name"] == model
    index = client.get_model_repository_index()
    assert sorted(m["name"] for m in index) == sorted(MODELS)
    assert all(m["state"] == "READY" for m in index)
    stats = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in stats} >= set(MODELS)
    plan_gauges = [line for line in server.metrics().splitlines() if line.startswith("squishy_plan_batch{")]
    assert {m for m in MODELS if any(f'model="{m}"' in line for line in plan_gauges)} == set(MODELS)


def test_unknown_model_and_wrong_shape_are_client_errors(server: Server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = httpclient.InferInput("pixels", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("digits", [tensor])
    assert error.value.status() == "400" and "shape" in error.value.message()
    tensor = httpclient.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("no-such-model", [tensor])
    assert error.value.status() == "404"
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    gtensor = grpcclient.InferInput("pixels", [1, 63], "FP32")
    gtensor.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as error:
        grpc.infer("digits", [gtensor])
    assert "INVALID_ARGUMENT" in str(error.value.status())


def test_a_request_that_cannot_meet_its_deadline_is_answered_503_at_once(server: Server):
    # resnet18-half takes milliseconds per image; a 10 µs timeout cannot be met, so the answer is immediate.
    body = {
        "inputs": [{"name": "image", "shape": [1, 3, 112, 112], "datatype": "FP32", "data": [0.0] * (3 * 112 * 112)}],
        "parameters": {"timeout": 10},
    }
    metadata = httpx.get(f"{server.http_url}/v2/models/resnet18-half").json()
    body["inputs"][0]["name"] = metadata["inputs"][0]["name"]
    body["inputs"][0]["shape"] = [1, *metadata["inputs"][0]["shape"][1:]]
    size = int(np.prod(body["inputs"][0]["shape"]))
    body["inputs"][0]["data"] = [0.0] * size
    reply = httpx.post(f"{server.http_url}/v2/models/resnet18-half/infer", content=json.dumps(body), timeout=10)
    assert reply.status_code == 503
    assert "deadline" in reply.json()["error"]


def test_curl_style_json_request(server: Server):
    pixels = load_digits().data[0].astype(float).tolist()
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": pixels}]}
    reply = httpx.post(f"{server.http_url}/v2/models/digits/infer", json=body, timeout=10)
    assert reply.status_code == 200
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["label"]["data"] == [0]


def test_repository_unload_and_load_over_both_protocols(server: Server):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    bearer = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    with pytest.raises(InferenceServerException) as refused:
        http.unload_model("smallcnn")  # no token
    assert refused.value.status() == "401"
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        grpc.unload_model("smallcnn", headers={"authorization": "Bearer wrong"})
    assert http.is_model_ready("smallcnn")
    http.unload_model("smallcnn", headers=bearer)
    assert not http.is_model_ready("smallcnn")
    states = {m["name"]: m for m in http.get_model_repository_index()}
    assert states["smallcnn"]["state"] == "UNAVAILABLE"
    assert http.is_server_ready()  # unloaded on purpose: the server still serves what it should
    grpc.load_model("smallcnn", headers={"authorization": f"Bearer {CONTROL_TOKEN}"})
    assert grpc.is_model_ready("smallcnn")
    with pytest.raises(InferenceServerException) as error:
        http.load_model("../digits", headers=bearer)  # outside the repository: refused even with the token
    assert error.value.status() in ("400", "404")

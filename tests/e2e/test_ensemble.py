"""Triton ensembles on a real ``squishy serve``, configs written as Triton's docs show, called with
``tritonclient`` unchanged: the steps' answers compose, a failing or hanging step gives one clear error
within the deadline, and an ensemble that cannot run says why."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples

from .faulty import HANG, WIDTH, faulty_onnx, write_model

pytestmark = pytest.mark.e2e

QUADRUPLE = """
name: "quadruple"
platform: "ensemble"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "doubled" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "double"
      model_version: -1
      input_map { key: "x" value: "x" }
      output_map { key: "y" value: "doubled" }
    },
    {
      model_name: "double"
      model_version: -1
      input_map { key: "x" value: "doubled" }
      output_map { key: "y" value: "y" }
    }
  ]
}
"""

FRAGILE = """
name: "fragile"
platform: "ensemble"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
parameters { key: "slo_ms" value { string_value: "300" } }
ensemble_scheduling {
  step [
    { model_name: "double" input_map { key: "x" value: "x" } output_map { key: "y" value: "doubled" } },
    { model_name: "faulty" input_map { key: "x" value: "doubled" } output_map { key: "y" value: "y" } }
  ]
}
"""

DANGLING = """
name: "dangling"
platform: "ensemble"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [ { model_name: "double" input_map { key: "x" value: "nowhere" } output_map { key: "y" value: "y" } } ]
}
"""

ORPHAN = """
name: "orphan"
platform: "ensemble"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [ { model_name: "absent" input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ]
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ensembles") / "repository"
    build_examples(root, only=("double",))
    write_model(root, "faulty", faulty_onnx(), 200.0)
    for name, text in (("quadruple", QUADRUPLE), ("fragile", FRAGILE), ("dangling", DANGLING), ("orphan", ORPHAN)):
        (root / name / "1").mkdir(parents=True)  # Triton wants a version directory, empty for an ensemble
        (root / name / "config.pbtxt").write_text(text)
    with start_squishy(root, ["--no-strict-readiness"]) as running:
        yield running


def x_batch(rows: int = 3) -> np.ndarray:
    return np.arange(rows * WIDTH, dtype=np.float32).reshape(rows, WIDTH) / 10.0


def test_an_ensemble_composes_its_steps_over_both_protocols(server: ServerProcess) -> None:
    x = x_batch()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert http.is_model_ready("quadruple")
    assert http.get_model_metadata("quadruple")["platform"] == "ensemble"
    assert len(http.get_model_config("quadruple")["ensemble_scheduling"]["step"]) == 2
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = http.infer("quadruple", [tensor])
    assert np.allclose(result.as_numpy("y"), 4 * x) and np.allclose(result.as_numpy("doubled"), 2 * x)

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = grpc.infer("quadruple", [tensor], outputs=[grpcclient.InferRequestedOutput("y")])
    assert np.allclose(result.as_numpy("y"), 4 * x) and result.as_numpy("doubled") is None
    statistics = http.get_inference_statistics("quadruple")["model_stats"][0]
    assert int(statistics["inference_stats"]["success"]["count"]) >= 2


def test_a_failing_step_is_one_clear_error_naming_the_step(server: ServerProcess) -> None:
    x = x_batch(2)
    x[1, 0] = 60.0  # doubled to 120: the faulty model's table has 16 entries
    reply = httpx.post(
        f"{server.http_url}/v2/models/fragile/infer",
        json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]},
        timeout=10,
    )
    assert reply.status_code == 500, reply.text
    assert "ensemble 'fragile', step faulty" in reply.json()["error"]
    assert "indices element out of data bounds" in reply.json()["error"]


def test_a_hanging_step_is_answered_within_the_deadline(server: ServerProcess) -> None:
    x = x_batch(1)
    x[0, 1] = HANG / 2  # doubled by the first step: the faulty model loops for hours
    started = time.monotonic()
    reply = httpx.post(
        f"{server.http_url}/v2/models/fragile/infer",
        json={"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": x.ravel().tolist()}]},
        timeout=10,
    )
    took_s = time.monotonic() - started
    assert reply.status_code == 503, reply.text
    assert "ensemble 'fragile', step faulty" in reply.json()["error"] and "deadline" in reply.json()["error"]
    assert took_s < 1.0  # the ensemble's SLO is 300 ms; generous slack for a busy machine, far below a hang


def test_an_ensemble_that_cannot_run_says_why(server: ServerProcess) -> None:
    index = {m["name"]: m for m in httpx.post(f"{server.http_url}/v2/repository/index", json={}).json()}
    assert index["dangling"]["state"] == "UNAVAILABLE"
    assert "reads 'nowhere', which no step writes" in index["dangling"]["reason"]
    assert index["orphan"]["state"] == "UNAVAILABLE" and "absent" in index["orphan"]["reason"]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert not http.is_model_ready("orphan")
    tensor = httpclient.InferInput("x", [1, WIDTH], "FP32")
    tensor.set_data_from_numpy(x_batch(1))
    with pytest.raises(InferenceServerException) as error:
        http.infer("orphan", [tensor])
    assert error.value.status() in ("400", "404") and "absent" in str(error.value)

"""A task served by variants through ``squishy serve``: unchanged Triton clients see which variant answered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from squishy.bench.launch import start_squishy
from tests.runtime.onnx_models import WEIGHT, add_model

pytestmark = pytest.mark.e2e

VARIANT_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "x" data_type: TYPE_FP32 dims: [4] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [2] }}
parameters {{ key: "slo_ms" value {{ string_value: "100" }} }}
parameters {{ key: "accuracy" value {{ string_value: "{accuracy}" }} }}
"""

TASK_CONFIG = """
name: "task"
platform: "squishy_variants"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [4] }
output { name: "y" data_type: TYPE_FP32 dims: [2] }
parameters { key: "slo_ms" value { string_value: "100" } }
parameters { key: "variants" value { string_value: "cheap,accurate" } }
"""


def test_clients_call_the_task_and_the_response_names_the_variant(tmp_path: Path):
    add_model(tmp_path, "cheap", config=VARIANT_CONFIG.format(name="cheap", accuracy="0.7"))
    add_model(tmp_path, "accurate", config=VARIANT_CONFIG.format(name="accurate", accuracy="0.9"))
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "config.pbtxt").write_text(TASK_CONFIG)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with start_squishy(tmp_path, ["--slots", "1"]) as server:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert http.is_server_ready() and http.is_model_ready("task")
        tensor = httpclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        answer = http.infer("task", [tensor])
        np.testing.assert_allclose(answer.as_numpy("y"), x @ WEIGHT, rtol=1e-6)
        response = answer.get_response()
        assert response["model_name"] == "task" and response["parameters"] == {"squishy_variant": "accurate"}

        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        answer = grpc.infer("task", [tensor])
        np.testing.assert_allclose(answer.as_numpy("y"), x @ WEIGHT, rtol=1e-6)
        assert answer.get_response().parameters["squishy_variant"].string_param == "accurate"
        assert grpc.get_model_metadata("task").inputs[0].name == "x"
        metrics = server.metrics()
    assert 'squishy_variant_requests_total{model="task",variant="accurate"} 2.0' in metrics

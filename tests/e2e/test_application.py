"""Python applications on a real ``squishy serve``: data-dependent fan-out through ordinary model calls,
the measured fan-out γ, and one clear error for an application's bug, a miswired call, an application
still running at its deadline, and a module that does not import."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples

from .test_load import counter_sum

pytestmark = pytest.mark.e2e


def config(name: str, slo_ms: float = 200.0) -> str:
    return f"""name: "{name}"
platform: "squishy_application"
max_batch_size: 0
input [ {{ name: "count" data_type: TYPE_INT32 dims: [ 1 ] }}, {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "total" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "calls" data_type: TYPE_INT32 dims: [ 1 ] }} ]
parameters {{ key: "slo_ms" value {{ string_value: "{slo_ms:g}" }} }}
"""


FANOUT = """
import asyncio
import numpy as np

CALLS = {"double": {}}

async def execute(inputs, call):
    count = int(inputs["count"][0])  # how many calls: from the request's content, not from a knob
    x = inputs["x"].reshape(1, 4)
    outputs = await asyncio.gather(*(call("double", {"x": x}) for _ in range(count)))
    total = np.sum([o["y"][0] for o in outputs], axis=0) if outputs else np.zeros(4, np.float32)
    return {"total": total.astype(np.float32), "calls": np.array([count], np.int32)}
"""

BUGGY = """
async def execute(inputs, call):
    return {"total": 1 / 0}
"""

SLOW = """
import asyncio

async def execute(inputs, call):
    await asyncio.sleep(30)
"""

MISWIRED = """
async def execute(inputs, call):
    return await call("double", {"wrong": inputs["x"].reshape(1, 4)})
"""

UNIMPORTABLE = """
async def execute(inputs, call)
    pass
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("applications") / "repository"
    build_examples(root, only=("double",))
    for name, code, slo_ms in (
        ("fanout", FANOUT, 200.0),
        ("buggy", BUGGY, 200.0),
        ("slow", SLOW, 100.0),
        ("miswired", MISWIRED, 200.0),
        ("unimportable", UNIMPORTABLE, 200.0),
    ):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "application.py").write_text(code)
        (root / name / "config.pbtxt").write_text(config(name, slo_ms))
    with start_squishy(root, ["--no-strict-readiness", "--epoch-s", "1"]) as running:
        yield running


def call(server: ServerProcess, name: str, count: int, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {"name": "count", "shape": [1], "datatype": "INT32", "data": [count]},
            {"name": "x", "shape": [4], "datatype": "FP32", "data": x.tolist()},
        ]
    }
    return httpx.post(f"{server.http_url}/v2/models/{name}/infer", json=body, timeout=10)


def test_the_fan_out_follows_the_content_and_is_measured(server: ServerProcess) -> None:
    x = np.array([0.5, 1.0, -2.0, 3.0], np.float32)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert http.is_model_ready("fanout")
    for count in (1, 2, 3, 4):
        count_tensor = httpclient.InferInput("count", [1], "INT32")
        count_tensor.set_data_from_numpy(np.array([count], np.int32))
        x_tensor = httpclient.InferInput("x", [4], "FP32")
        x_tensor.set_data_from_numpy(x)
        result = http.infer("fanout", [count_tensor, x_tensor])
        assert np.allclose(result.as_numpy("total"), count * 2 * x)
        assert result.as_numpy("calls").tolist() == [count]
    # Its calls are ordinary requests to the model: counted there too.
    assert counter_sum(server.metrics(), "nv_inference_request_success", model="double") >= 10
    deadline = time.monotonic() + 10
    gamma = 0.0
    while time.monotonic() < deadline:  # published with the control loop's next tick
        gamma = counter_sum(server.metrics(), "squishy_application_fan_out", application="fanout", child="double")
        if gamma:
            break
        time.sleep(0.2)
    assert gamma == pytest.approx(2.5)  # (1 + 2 + 3 + 4) calls over 4 requests


def test_an_applications_bug_is_a_500_that_says_where(server: ServerProcess) -> None:
    reply = call(server, "buggy", 1, np.zeros(4, np.float32))
    assert reply.status_code == 500
    assert reply.json()["error"] == "application 'buggy' failed: ZeroDivisionError: division by zero"


def test_a_miswired_call_is_a_400_naming_the_call(server: ServerProcess) -> None:
    reply = call(server, "miswired", 1, np.zeros(4, np.float32))
    assert reply.status_code == 400
    assert "application 'miswired', call to 'double'" in reply.json()["error"] and "'x'" in reply.json()["error"]


def test_an_application_still_running_at_its_deadline_is_answered_then(server: ServerProcess) -> None:
    started = time.monotonic()
    reply = call(server, "slow", 1, np.zeros(4, np.float32))
    assert reply.status_code == 503 and "did not finish within its 100 ms deadline" in reply.json()["error"]
    assert time.monotonic() - started < 1.0  # far below the 30 s it would sleep


def test_a_module_that_does_not_import_is_unavailable_with_the_reason(server: ServerProcess) -> None:
    index = {m["name"]: m for m in httpx.post(f"{server.http_url}/v2/repository/index", json={}).json()}
    assert index["unimportable"]["state"] == "UNAVAILABLE"
    assert "does not import: SyntaxError" in index["unimportable"]["reason"]
    assert index["fanout"]["state"] == "READY"

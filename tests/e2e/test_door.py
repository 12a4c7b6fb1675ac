"""The front door on a real ``squishy serve``: flooded far beyond what one process can parse, it sheds
with a reason, answers every request exactly once, and serves normally once the flood stops."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from squishy.bench import BenchConfig, ModelLoad, run
from squishy.bench.launch import start_squishy
from squishy.bench.records import NO_REPLY, STATUS_OK
from squishy.examples import build_examples


@pytest.fixture(scope="module")
def double_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("door") / "repository"
    build_examples(root, only=("double",))
    return root


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_flood_is_shed_at_the_door_and_every_request_answered_once(double_repository: Path, protocol: str) -> None:
    with start_squishy(double_repository) as server:
        # Far more than one Python process parses on any machine: the generator sends as fast as it can.
        flood = ModelLoad("double", 20_000.0, 50.0, encoding="json" if protocol == "http" else "binary")
        config = BenchConfig(
            models=(flood,), url=server.http_url, grpc_url=server.grpc_url, protocol=protocol,
            duration_s=3.0, warmup_s=0.5, max_connections=500,
        )  # fmt: skip
        result = run(config, isolate=True)
        statuses = set(result.log.status.tolist())
        assert NO_REPLY not in statuses  # every request was answered
        assert statuses <= {STATUS_OK, 503}, result.per_model["double"].status_counts
        assert 503 in statuses
        metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
        shed = [line for line in metrics.splitlines() if line.startswith("squishy_door_shed_total{")]
        assert shed and sum(float(line.rsplit(" ", 1)[1]) for line in shed) > 0
        # The flood is over: a request is served, within its SLO's worth of time, by the same server.
        reply = httpx.post(
            f"{server.http_url}/v2/models/double/infer",
            json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            timeout=10,
        )
        assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def test_a_shed_request_names_why(double_repository: Path) -> None:
    with start_squishy(double_repository) as server:
        config = BenchConfig(
            models=(ModelLoad("double", 20_000.0, 50.0, encoding="json"),), url=server.http_url,
            duration_s=2.0, warmup_s=0.0, max_connections=500,
        )  # fmt: skip
        result = run(config, isolate=True)
    assert result.per_model["double"].status_counts.get(503, 0) > 0
    message = result.error_messages[503]
    assert "'double'" in message and ("overloaded" in message or "deadline" in message), message

"""The front door on a real ``squishy serve``: flooded far beyond what one process can parse, it sheds
with a reason, keeps serving some requests, and serves normally once the flood stops. (Exactly one reply
per request at 1.5× and 2× the max rate is measured by ``benchmarks/bench_overload.py``.)"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from squishy.bench import BenchConfig, ModelLoad, run
from squishy.bench.launch import start_squishy
from squishy.bench.records import NO_REPLY, STATUS_OK
from squishy.examples import build_examples

# Far more than one process parses, over enough connections that the queue forms at the server, where the
# door can see it: with too few, the flood waits in the generator and reaches the server as a trickle.
FLOOD_PER_S = 30_000.0
FLOOD_CONNECTIONS = 4000


@pytest.fixture(scope="module")
def double_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("door") / "repository"
    build_examples(root, only=("double",))
    return root


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_flood_is_shed_at_the_door_and_the_server_keeps_serving(double_repository: Path, protocol: str) -> None:
    with start_squishy(double_repository) as server:
        # Far more than one Python process parses on any machine: the generator sends as fast as it can.
        flood = ModelLoad("double", FLOOD_PER_S, 50.0, encoding="json" if protocol == "http" else "binary")
        config = BenchConfig(
            models=(flood,), url=server.http_url, grpc_url=server.grpc_url, protocol=protocol,
            duration_s=3.0, warmup_s=0.5, max_connections=FLOOD_CONNECTIONS,
        )  # fmt: skip
        result = run(config, isolate=True)
        # Several times what the server can even read: what it answered, it answered with a result or a
        # shed (no connection reset, no 500); what was still in the sockets when the run ended got nothing.
        sent = ~np.isnan(result.log.send_s)
        statuses = set(result.log.status[sent].tolist())
        assert statuses <= {STATUS_OK, 503, NO_REPLY}, result.per_model["double"].status_counts
        assert STATUS_OK in statuses
        # Whether the door sheds in so short a flood is not asserted: on a machine where one process parses
        # faster than 500 connections can feed it, the queue waits in the clients and socket buffers, which
        # the door does not see (docs/reliability.md, "Measured"); what a shed says is tested below.
        # The flood is over: once the requests left in its sockets are shed, the same server serves again.
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        deadline = time.monotonic() + 30.0
        while True:
            reply = httpx.post(f"{server.http_url}/v2/models/double/infer", json=body, timeout=10)
            if reply.status_code != 503 or time.monotonic() > deadline:
                break
            assert "overloaded" in reply.json()["error"] or "deadline" in reply.json()["error"]
            time.sleep(0.2)
        assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def test_a_shed_request_names_why(double_repository: Path) -> None:
    with start_squishy(double_repository) as server:
        config = BenchConfig(
            models=(ModelLoad("double", FLOOD_PER_S, 50.0, encoding="json"),), url=server.http_url,
            duration_s=6.0, warmup_s=0.5, max_connections=FLOOD_CONNECTIONS,
        )  # fmt: skip
        # Longer than the flood above: the door acts on a lag sustained over three probe samples, a load
        # generator short of CPU sends the first second's requests late, and in 3 s a shed did not always
        # come (about one run in four on this machine).
        result = run(config, isolate=True)
    assert result.per_model["double"].status_counts.get(503, 0) > 0
    message = result.error_messages[503]
    assert "'double'" in message and ("overloaded" in message or "deadline" in message), message

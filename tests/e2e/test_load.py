"""Under load, with the plan changing and bad requests in between, every request gets exactly one reply."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e

# Open-loop mix over ~6 s: the cheap models dominate, the costly CNN is rare (req/s per model).
MIX = {"digits": 60.0, "smallcnn": 40.0, "resnet18-half": 12.0}
DURATION_S = 6.0


@pytest.fixture(scope="module")
def busy_server(example_repository: Path) -> Iterator[Server]:
    # Short epochs so the plan changes while the load runs; a small body limit to exercise 413.
    running = start_server(example_repository, "--epoch-s", "1", "--max-body-mb", "1")
    try:
        yield running
    finally:
        stop_server(running)


def model_input(server: Server, model: str) -> tuple[str, list[int]]:
    metadata = httpx.get(f"{server.http_url}/v2/models/{model}").json()
    tensor = metadata["inputs"][0]
    return tensor["name"], [d if d > 0 else 1 for d in tensor["shape"][1:]]


def counter_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def plan_batches(text: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(squishy_plan_batch\{[^}]*\}) (\S+)$", text, flags=re.MULTILINE)
    }


def bad_requests(server: Server, input_name: str) -> list[int]:
    """A battery of malformed requests; returns their status codes (a disconnect gives 0)."""
    url = f"{server.http_url}/v2/models/digits/infer"
    good = {"name": input_name, "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    statuses = []
    with httpx.Client(timeout=10) as client:
        for body, headers in [
            (b"{not json", {}),
            (json.dumps({"inputs": [{**good, "shape": [1, 65]}]}).encode(), {}),
            (json.dumps({"inputs": [{**good, "datatype": "INT64"}]}).encode(), {}),
            (json.dumps({"inputs": [good], "parameters": {"priority": "high"}}).encode(), {}),
            (json.dumps({"inputs": [good], "parameters": {"timeout": -5}}).encode(), {}),
            (json.dumps({"inputs": [good], "parameters": {"my_custom_tag": "kept"}}).encode(), {}),  # fine
            (gzip.compress(b"{truncated"), {"Content-Encoding": "gzip"}),
            (b"\0" * (2 * 1024 * 1024), {}),  # over the 1 MB body limit
        ]:
            statuses.append(client.post(url, content=body, headers=headers).status_code)
        header = json.dumps(
            {
                "inputs": [
                    {"name": input_name, "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}
                ]
            }
        ).encode()
        binary = {"Inference-Header-Content-Length": str(len(header))}
        statuses.append(client.post(url, content=header + b"\0" * 100, headers=binary).status_code)  # short tensor
        statuses.append(client.post(f"{server.http_url}/v2/models/nope/infer", content=b"{}").status_code)
        statuses.append(client.get(f"{server.http_url}/v2/models/../../etc/passwd").status_code)
    # A client that promises a body and disconnects half-way.
    with socket.create_connection(("127.0.0.1", server.http_port)) as raw:
        raw.sendall(b'POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"inputs":')
    statuses.append(0)
    return statuses


async def drive(server: Server) -> tuple[Counter[str], int]:
    rng = np.random.default_rng(7)
    inputs = {m: model_input(server, m) for m in MIX}
    http = http_aio.InferenceServerClient(f"127.0.0.1:{server.http_port}", conn_limit=256)
    grpc = grpc_aio.InferenceServerClient(server.grpc_url)
    outcomes: Counter[str] = Counter()

    async def one(model: str, use_grpc: bool, rows: int) -> None:
        name, dims = inputs[model]
        data = rng.random((rows, *dims), dtype=np.float32)
        module = grpc_aio if use_grpc else http_aio
        tensor = module.InferInput(name, [rows, *dims], "FP32")
        tensor.set_data_from_numpy(data)
        try:
            result = await (grpc if use_grpc else http).infer(model, [tensor])
            first_output = result.get_response(as_json=True)["outputs"][0]["name"] if use_grpc else None
            rows_back = result.as_numpy(first_output or result.get_response()["outputs"][0]["name"]).shape[0]
            outcomes["ok" if rows_back == rows else "wrong rows"] += 1
        except InferenceServerException as error:
            status = str(error.status())
            outcomes["dropped" if status in ("503", "StatusCode.UNAVAILABLE") else f"error {status}"] += 1

    tasks = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    total_rate = sum(MIX.values())
    names, weights = list(MIX), np.array(list(MIX.values())) / total_rate
    while loop.time() - start < DURATION_S:
        model = str(rng.choice(names, p=weights))
        rows = int(rng.choice([1, 1, 1, 2, 4])) if model != "resnet18-half" else 1
        tasks.append(asyncio.create_task(one(model, bool(rng.random() < 0.4), rows)))
        await asyncio.sleep(float(rng.exponential(1 / total_rate)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    await http.close()
    await grpc.close()
    return outcomes, len(tasks)


def test_every_request_gets_exactly_one_reply_through_plan_changes_and_bad_input(busy_server: Server):
    before = busy_server.metrics()
    input_name, _ = model_input(busy_server, "digits")

    async def scenario() -> tuple[Counter[str], int, list[int]]:
        load = asyncio.create_task(drive(busy_server))
        await asyncio.sleep(DURATION_S / 2)
        statuses = await asyncio.to_thread(bad_requests, busy_server, input_name)
        outcomes, sent = await load
        return outcomes, sent, statuses

    outcomes, sent, statuses = asyncio.run(scenario())

    # Exactly one reply per request: a result or an explicit 503, never an error or silence.
    assert sum(outcomes.values()) == sent
    assert set(outcomes) <= {"ok", "dropped"}, outcomes
    assert outcomes["ok"] >= 0.95 * sent
    # The server's own books agree: every accepted request was answered once (success or dropped).
    after = busy_server.metrics()
    answered = sum(
        counter_sum(after, "nv_inference_request_success", model=m)
        + counter_sum(after, "nv_inference_request_failure", model=m, reason="REJECTED")
        - counter_sum(before, "nv_inference_request_success", model=m)
        - counter_sum(before, "nv_inference_request_failure", model=m, reason="REJECTED")
        for m in MIX
    )
    assert answered == sent + 1  # + the battery's one well-formed request with a custom parameter

    # The bad requests got precise client errors, and the one with an unknown custom parameter succeeded.
    assert statuses[:5] == [400, 400, 400, 400, 400]
    assert statuses[5] == 200
    assert statuses[6:] == [400, 413, 400, 404, 404, 0]

    # The plan changed while the load ran, visibly in its gauges, and batches grew past one input.
    assert counter_sum(after, "squishy_replans_total") > counter_sum(before, "squishy_replans_total")
    assert plan_batches(after) != plan_batches(before)
    assert counter_sum(after, "squishy_batch_size_count") > counter_sum(after, "squishy_batch_size_bucket", le="1.0")

    # The server is still up and every model still serves.
    assert busy_server.alive()
    for model in MIX:
        name, dims = model_input(busy_server, model)
        body = {"inputs": [{"name": name, "shape": [1, *dims], "datatype": "FP32", "data": [0.5] * int(np.prod(dims))}]}
        assert httpx.post(f"{busy_server.http_url}/v2/models/{model}/infer", json=body, timeout=10).status_code == 200

"""Bad clients never take the server down: garbage, truncation, disconnects, cancelled calls."""

from __future__ import annotations

import json
import logging
import socket
import time

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.frontend.conftest import OnnxTestService
from tests.frontend.test_http import BAD_REQUESTS, post_infer

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def send_raw(port: int, payload: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def assert_serving(http_url: str) -> None:
    response = httpx.post(f"{http_url}/v2/models/affine/infer", json=GOOD, timeout=5)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def test_battery_of_bad_requests_then_good_ones(server, http_url: str, caplog: pytest.LogCaptureFixture) -> None:
    port = server.ports.http
    caplog.set_level(logging.ERROR, logger="squishy")
    with httpx.Client(base_url=http_url, timeout=5) as raw:
        for _ in range(3):
            for body, headers, status, _ in BAD_REQUESTS:
                assert post_infer(raw, body, headers).status_code == status
            # Keep-alive survives every error: the next request on the same connection works.
            assert post_infer(raw, GOOD).status_code == 200
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b'POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"in',  # then EOF
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
        b"GET /v2/health/live HTTP/1.1\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n",
    ]
    for payload in garbage:
        send_raw(port, payload)
    assert_serving(http_url)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_client_disconnect_mid_body(server, http_url: str) -> None:
    header = b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    for _ in range(5):
        send_raw(server.ports.http, header + b'{"inputs": [', read=False)
    assert_serving(http_url)


def test_client_disconnect_while_the_core_works(server, http_url: str, service: OnnxTestService) -> None:
    body = json.dumps({**GOOD, "parameters": {"delay_ms": 200}}).encode()
    request = (
        b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    finished = service.finished
    for _ in range(3):
        send_raw(server.ports.http, request, read=False)  # gone before the answer
    wait_for(lambda: service.finished >= finished + 3)
    assert_serving(http_url)


def test_grpc_deadline_and_cancel_leave_the_server_healthy(
    server, grpc_url: str, http_url: str, service: OnnxTestService
) -> None:
    with grpc.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="affine")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        slow = service_pb2.ModelInferRequest()
        slow.CopyFrom(request)
        slow.parameters["delay_ms"].int64_param = 200
        finished = service.finished
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(slow, timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.ModelInfer.future(slow)
        time.sleep(0.05)
        future.cancel()
        # The core finishes both requests (a client's cancellation is not pushed into it)...
        wait_for(lambda: service.finished >= finished + 2)
        # ...and a stream whose client disappears mid-way does no harm either.
        stream = stub.ModelStreamInfer(iter([slow, slow]), timeout=0.05)
        with pytest.raises(grpc.RpcError):
            list(stream)
        response = stub.ModelInfer(request, timeout=5)
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [3.0] * 4
    assert_serving(http_url)

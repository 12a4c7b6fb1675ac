"""The door's cheap path over a real socket: a shed infer request is answered 503 with its reason from
the parsed headers alone, its body is skipped, and the same keep-alive connection goes on serving."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from squishy.frontend import ThreadedServer, start_in_thread
from squishy.frontend.door import DoorConfig

from .conftest import OnnxTestService


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    # An interval that never ends and a tiny target: the door stays in whatever state the test sets.
    config = DoorConfig(target_ms=1e-6, interval_ms=1e9)
    with start_in_thread(OnnxTestService(), metrics_port=None, door=config) as running:
        yield running


def infer(body: bytes, connection: str = "keep-alive") -> bytes:
    return (
        f"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Connection: {connection}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest[:length]


BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


def test_a_shed_request_is_answered_from_its_headers_and_the_connection_serves_on(server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.ports.http), timeout=10) as sock:
        server.door.standing = True  # overloaded: every request waited past the (tiny) target
        big = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}],
                            "padding": "x" * 200_000})  # fmt: skip
        sock.sendall(infer(big))
        status, headers, body = read_reply(sock)
        assert status == 503 and headers["content-type"] == "application/json"
        assert "overloaded" in orjson.loads(body)["error"]
        server.door.standing = False
        sock.sendall(infer(BODY))  # the same connection: the shed request's 200 kB body was skipped
        status, _, body = read_reply(sock)
        assert status == 200 and orjson.loads(body)["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]
    assert server.door.shed == {"queue": 1}
    assert server.door.in_flight[("affine", "1")] == 0


def test_a_shed_request_that_asked_to_close_is_closed(server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.ports.http), timeout=10) as sock:
        server.door.standing = True
        sock.sendall(infer(BODY, connection="close"))
        status, headers, _ = read_reply(sock)
        assert status == 503 and headers["connection"] == "close"
        assert sock.recv(1) == b""  # closed by the server

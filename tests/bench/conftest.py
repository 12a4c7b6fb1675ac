"""Servers the generator's tests drive: squishy's frontend over the frontend tests' ONNX service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from squishy.frontend import ThreadedServer, start_in_thread
from tests.frontend.conftest import OnnxTestService


@pytest.fixture(scope="session")
def squishy_server() -> Iterator[ThreadedServer]:
    running = start_in_thread(OnnxTestService(), metrics_port=None)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def http_url(squishy_server: ThreadedServer) -> str:
    return f"http://127.0.0.1:{squishy_server.ports.http}"


@pytest.fixture(scope="session")
def grpc_url(squishy_server: ThreadedServer) -> str:
    return f"127.0.0.1:{squishy_server.ports.grpc}"

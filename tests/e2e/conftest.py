"""Fixtures that build the example repository and start ``squishy serve`` as a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from squishy.examples import build_examples

# The example models these tests serve: a real classifier and two CNNs of very different cost.
MODELS = ("digits", "smallcnn", "resnet18-half")
START_TIMEOUT_S = 180.0


@dataclass
class Server:
    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    metrics_port: int
    output: list[str]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=10).text

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture(scope="session")
def example_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    build_examples(root, only=MODELS)
    return root


def start_server(repository: Path, *extra: str) -> Server:
    command = [
        sys.executable, "-m", "squishy.cli", "serve", "--repository", str(repository),
        "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if match := re.search(r"OIP REST on http://[^:]+:(\d+)/v2, gRPC on [^:]+:(\d+)", line):
            ports["http"], ports["grpc"] = int(match.group(1)), int(match.group(2))
        if match := re.search(r"metrics on http://[^:]+:(\d+)/metrics", line):
            ports["metrics"] = int(match.group(1))
        if "squishy: ready" in line or time.monotonic() > deadline:
            break
    if "metrics" not in ports or "http" not in ports:
        process.kill()
        raise RuntimeError("squishy serve did not start:\n" + "".join(output))
    # Keep draining its output so the server never blocks on a full pipe.
    threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True).start()
    return Server(process, ports["http"], ports["grpc"], ports["metrics"], output)


def stop_server(server: Server) -> None:
    if server.alive():
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def server(example_repository: Path) -> Iterator[Server]:
    running = start_server(example_repository)
    try:
        yield running
    finally:
        stop_server(running)

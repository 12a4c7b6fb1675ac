"""What a new user meets on a first ``squishy serve``: a taken port fails at once in one line, the console
and /v2/health/ready agree, and repository control is off unless asked for."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from squishy.bench.launch import start_squishy


def test_a_taken_port_is_named_in_one_line_before_any_model_loads(example_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "squishy.cli", "serve", "--repository", str(example_repository),
            "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", str(port), "--metrics-port", "0",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--grpc-port" in lines[0]
    assert "loading and profiling" not in result.stdout + result.stderr


def test_by_default_the_repository_cannot_be_changed_over_the_wire(example_repository: Path) -> None:
    with start_squishy(example_repository) as server:
        assert any("repository control off" in line for line in server.output)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        try:
            client.unload_model("digits")
        except InferenceServerException as refused:
            assert refused.status() == "403"
        else:
            raise AssertionError("unload was accepted without --model-control explicit")
        assert client.is_model_ready("digits")


def test_the_console_and_health_ready_agree_when_a_model_fails(example_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(example_repository / "digits", repository / "digits")
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    (broken.parent / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    with start_squishy(repository) as server:
        console = "".join(server.output)
        ready = httpx.get(f"{server.http_url}/v2/health/ready")
        assert ready.status_code == 503
        assert "NOT READY" in console and "broken" in console
        assert "squishy: ready" not in console
        # What loaded serves all the same.
        assert httpx.get(f"{server.http_url}/v2/models/digits/ready").status_code == 200

"""``squishy bench``: a table on stdout, JSON on request, and one clear line for what stops a run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from squishy.cli import main
from tests.bench.synthetic import MODEL, LimitedServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bench(*args: str) -> int:
    return main(["bench", "--no-progress", "--duration", "0.3", "--warmup", "0.1", *args])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("squishy: error: ")
    return lines[0]


def test_server_down_is_one_line_and_a_nonzero_exit(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert bench("--url", f"http://127.0.0.1:{port}", "--model", "m", "--rate", "5", "--slo-ms", "50") != 0
    assert f"cannot reach the server at http://127.0.0.1:{port}" in one_error_line(capsys)
    assert bench("--protocol", "grpc", "--grpc-url", f"127.0.0.1:{port}", "--model", "m:5:50") != 0
    assert f"cannot reach the gRPC server at 127.0.0.1:{port}" in one_error_line(capsys)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unknown_model_is_one_line(
    protocol: str, http_url: str, grpc_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench("--protocol", protocol, "--url", http_url, "--grpc-url", grpc_url, "--model", "nope:5:50")
    assert code != 0
    assert "model 'nope' is not known to the server" in one_error_line(capsys)


def test_missing_settings_and_variable_shapes_are_named(http_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--url", http_url, "--model", "affine", "--slo-ms", "50") != 0
    assert "no rate for model 'affine'" in one_error_line(capsys)
    assert bench("--url", http_url, "--model", "echo:5:50") != 0
    assert "input 'text' has a variable shape [-1]: give it with --input text=1:BYTES" in one_error_line(capsys)
    assert bench("--url", http_url, "--model", "affine:5:50", "--input", "z=1,4") != 0
    assert "no model driven has an input 'z'" in one_error_line(capsys)
    assert bench("--url", http_url, "--model", "affine:5:50", "--arrivals", "gamma:zero") != 0
    assert "bad CV" in one_error_line(capsys)


def test_a_mix_prints_a_table_and_writes_json(
    http_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    code = bench(
        "--url", http_url, "--model", "affine:40", "--model", "echo:20:80", "--slo-ms", "500",
        "--input", "echo/text=2", "--arrivals", "gamma:2", "--seed", "4", "--json", str(out), "--requests",
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    for expected in ("affine", "echo", "overall", "p99 ms", "goodput r/s", "bad rate", "generator:", "% of one core"):
        assert expected in table
    document = json.loads(out.read_text())
    run = document["run"]
    assert set(run["per_model"]) == {"affine", "echo"}
    assert run["per_model"]["echo"]["slo_ms"] == 80 and run["per_model"]["affine"]["slo_ms"] == 500
    assert run["overall"]["sent"] == run["per_model"]["affine"]["sent"] + run["per_model"]["echo"]["sent"]
    assert run["inputs"]["echo"] == [{"name": "text", "shape": [2], "datatype": "BYTES"}]
    assert run["config"]["arrivals"] == "gamma:2" and run["generator"]["cpu_share"] >= 0
    assert {"date", "nproc", "cpu_model"} <= set(document["environment"])
    row = run["requests"][0]
    assert set(row) == {"model", "scheduled_ms", "sent_ms", "reply_ms", "status", "met_slo"}


@pytest.fixture
def limited() -> Iterator[LimitedServer]:
    server = LimitedServer(1000.0)
    yield server
    server.stop()


def test_search_prints_the_steps_and_the_goodput(limited: LimitedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench("--url", limited.url, "--model", f"{MODEL}:50", "--slo-ms", "500", "--search", "--max-rate", "100")
    assert code == 0
    captured = capsys.readouterr()
    assert "goodput at the SLO (99% within SLO): 100.0 req/s offered" in captured.out
    assert "scan" in captured.err and "confirm" in captured.err
    assert "pass/fail curve:" in captured.out


def test_the_installed_command_prints_no_traceback() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "squishy.cli", "bench", "--url", f"http://127.0.0.1:{port}", "--model", "m:1:10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"squishy: error: cannot reach the server at http://127.0.0.1:{port}: Connection refused"
    ]

"""Starting and stopping: free ports, graceful shutdown, serve() cancelled, run() stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest
import uvloop

from squishy.frontend import BoundPorts, serve, start_in_thread
from tests.frontend.conftest import OnnxTestService

SLOW = {
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    "parameters": {"delay_ms": 300},
}


def test_graceful_stop_finishes_requests_in_flight() -> None:
    service = OnnxTestService()
    server = start_in_thread(service, metrics_port=None)
    assert server.ports.metrics is None
    url = f"http://127.0.0.1:{server.ports.http}"
    answers: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v2/models/affine/infer", json=SLOW)))
    slow.start()
    # Wait until the request is in the core, then stop while it is still being served.
    while not service.requests:
        threading.Event().wait(0.01)
    server.stop(grace_s=5)
    slow.join()
    assert answers[0].status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live")


def test_serve_runs_until_cancelled() -> None:
    started: list[BoundPorts] = []

    async def main() -> None:
        task = asyncio.create_task(
            serve(
                OnnxTestService(),
                host="127.0.0.1",
                http_port=0,
                grpc_port=0,
                metrics_port=0,
                grace_s=1,
                on_started=started.append,
            )
        )
        while not started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            live = await client.get(f"http://127.0.0.1:{started[0].http}/v2/health/live")
            assert live.json() == {"live": True}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    uvloop.run(main())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{started[0].http}/v2/health/live")


def test_run_stops_on_sigterm() -> None:
    script = textwrap.dedent(
        """
        from squishy.frontend import run
        from tests.frontend.conftest import OnnxTestService

        run(OnnxTestService(), host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0, grace_s=1,
            on_started=lambda ports: print(ports.http, flush=True))
        print("stopped", flush=True)
        """
    )
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_port_in_use_is_an_error_not_a_hang(server) -> None:
    with pytest.raises(OSError):
        start_in_thread(OnnxTestService(), http_port=server.ports.http)
    with pytest.raises(OSError, match="cannot bind the gRPC server"):
        start_in_thread(OnnxTestService(), grpc_port=server.ports.grpc)

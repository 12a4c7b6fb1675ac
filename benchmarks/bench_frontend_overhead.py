"""Per-request overhead of the frontend with a trivial service (not a test: run it by hand).

    .venv/bin/python benchmarks/bench_frontend_overhead.py [--requests 5000]

Three measurements, each against a baseline measured in the same run:
1. in-process: the REST ASGI app alone handling a small binary infer request (decode, validate, call
   the service, encode), driven with in-memory receive/send, versus a trivial ASGI app;
2. REST over loopback: serial requests on one keep-alive connection from a raw uvloop client in another
   process, squishy's binary infer versus a minimal uvicorn+httptools app answering a fixed body;
3. gRPC over loopback: a grpcio (sync, C core) client in another process, ModelInfer versus ServerLive
   (the cheapest RPC on the same server: transport and grpc.aio's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from typing import Any

import numpy as np
import uvloop

from squishy.frontend import start_in_thread
from squishy.frontend.http import HttpFrontend
from squishy.runtime.api import InferRequest, InferResponse, ModelSpec, ModelState, ModelStatistics, TensorSpec

SPEC = ModelSpec(
    name="identity",
    version="1",
    platform="python",
    max_batch_size=8,
    inputs=(TensorSpec("x", "FP32", (16,)),),
    outputs=(TensorSpec("y", "FP32", (16,)),),
    slo_ms=10.0,
)


class TrivialService:
    """Answers at once with the input as the output: all time measured is the frontend's."""

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return True

    def repository_index(self, ready_only: bool = False) -> list[ModelState]:
        return [ModelState("identity", "1", "READY")]

    def model_spec(self, name: str, version: str | None = None) -> ModelSpec:
        return SPEC

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return True

    async def infer(self, request: InferRequest) -> InferResponse:
        return InferResponse("identity", "1", {"y": request.inputs["x"]}, request.request_id)

    async def load_model(self, name: str, config_override: str | None = None) -> None:
        return None

    async def unload_model(self, name: str) -> None:
        return None

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        return []


def binary_request() -> tuple[bytes, int]:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + x.tobytes(), len(header)


def summary(samples_ns: list[int]) -> dict[str, float]:
    samples = sorted(samples_ns)
    return {
        "p50_us": round(samples[len(samples) // 2] / 1000, 1),
        "p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 1),
        "mean_us": round(statistics.fmean(samples) / 1000, 1),
    }


# ------------------------------------------------------------------------------------ 1. in-process


async def in_process(n: int) -> dict[str, Any]:
    body, header_length = binary_request()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/identity/infer",
        "raw_path": b"/v2/models/identity/infer",
        "headers": [
            (b"content-length", str(len(body)).encode()),
            (b"inference-header-content-length", str(header_length).encode()),
            (b"content-type", b"application/octet-stream"),
        ],
    }
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: dict[str, Any]) -> None:
        return None

    async def trivial(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    app = HttpFrontend(TrivialService())
    out = {}
    for name, handler in (("squishy", app), ("trivial ASGI app", trivial)):
        for _ in range(500):
            await handler(scope, receive, send)
        samples = []
        for _ in range(n):
            start = time.perf_counter_ns()
            await handler(scope, receive, send)
            samples.append(time.perf_counter_ns() - start)
        out[name] = summary(samples)
    return out


# ---------------------------------------------------------------------------------------- 2. REST


async def _http_client(port: int, payload: bytes, n: int) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples = []
    for i in range(n + 500):
        start = time.perf_counter_ns()
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        await reader.readexactly(length)
        if i >= 500:  # warm-up excluded
            samples.append(time.perf_counter_ns() - start)
        assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()
    return samples


def http_client_process(port: int, payload: bytes, n: int, results: Any) -> None:
    results.put(uvloop.run(_http_client(port, payload, n)))


async def _minimal_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    body = b'{"model_name":"identity","outputs":[]}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def minimal_uvicorn_process(port_queue: Any) -> None:
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_queue.put(sock.getsockname()[1])
    config = uvicorn.Config(
        _minimal_app, loop="uvloop", http="httptools", lifespan="off", access_log=False, log_level="warning"
    )
    uvicorn.Server(config).run(sockets=[sock])


def run_client(target: Any, *args: Any) -> list[int]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    process.start()
    samples = results.get(timeout=300)
    process.join()
    return samples


# ---------------------------------------------------------------------------------------- 3. gRPC


def grpc_client_process(address: str, n: int, results: Any) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    out = {}
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name, call, message in (
            ("ServerLive", stub.ServerLive, service_pb2.ServerLiveRequest()),
            ("ModelInfer", stub.ModelInfer, request),
        ):
            for _ in range(500):
                call(message)
            samples = []
            for _ in range(n):
                start = time.perf_counter_ns()
                call(message)
                samples.append(time.perf_counter_ns() - start)
            out[name] = samples
    results.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    n = parser.parse_args().requests
    report: dict[str, Any] = {"requests": n}

    report["in_process"] = uvloop.run(in_process(n))

    body, header_length = binary_request()
    server = start_in_thread(TrivialService())
    try:
        infer = (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
            + f"Inference-Header-Content-Length: {header_length}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        squishy_rest = run_client(http_client_process, server.ports.http, infer, n)
        grpc_samples = run_client(grpc_client_process, f"127.0.0.1:{server.ports.grpc}", n)
    finally:
        server.stop()

    context = multiprocessing.get_context("spawn")
    port_queue = context.Queue()
    minimal = context.Process(target=minimal_uvicorn_process, args=(port_queue,), daemon=True)
    minimal.start()
    try:
        port = port_queue.get(timeout=30)
        time.sleep(1.0)  # let it start listening
        baseline_rest = run_client(http_client_process, port, infer, n)  # the same bytes, ignored
    finally:
        minimal.terminate()
        minimal.join()

    report["rest_loopback"] = {
        "squishy binary infer": summary(squishy_rest),
        "minimal uvicorn app": summary(baseline_rest),
        "added_p50_us": round((sorted(squishy_rest)[n // 2] - sorted(baseline_rest)[n // 2]) / 1000, 1),
    }
    live, infer_ns = grpc_samples["ServerLive"], grpc_samples["ModelInfer"]
    report["grpc_loopback"] = {
        "ModelInfer": summary(infer_ns),
        "ServerLive": summary(live),
        "added_p50_us": round((sorted(infer_ns)[n // 2] - sorted(live)[n // 2]) / 1000, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

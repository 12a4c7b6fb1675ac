"""The generator's own ceiling: how fast it drives a server that does (almost) nothing.

    .venv/bin/python -m squishy.bench.ceiling [--protocol http|grpc|both] [--slo-ms 50] [--duration 5]

A trivial OIP server runs in a child process (REST: a uvloop protocol over httptools answering a fixed
reply; gRPC: grpc.aio answering a fixed ModelInferResponse), and the goodput search runs against it.
The rate found is the most this generator can be trusted to offer on this machine: a server figure
near it measures the generator. Both processes' CPU shares are printed, since they share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from typing import Any

import httptools
import orjson

from squishy.bench.config import BenchConfig, ModelLoad
from squishy.bench.launch import process_cpu_s
from squishy.bench.report import render_search, render_step
from squishy.bench.search import SearchResult, SearchSettings, search

MODEL = "trivial"
_METADATA = orjson.dumps(
    {
        "name": MODEL,
        "versions": ["1"],
        "platform": "trivial",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
    }
)
_CONFIG = orjson.dumps({"name": MODEL, "max_batch_size": 8})
_INFER = orjson.dumps({"model_name": MODEL, "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 0]}]})


def _response(body: bytes, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


_REPLIES = {
    f"/v2/models/{MODEL}".encode(): _response(_METADATA),
    f"/v2/models/{MODEL}/config".encode(): _response(_CONFIG),
}
_INFER_REPLY = _response(_INFER)
_NOT_FOUND = _response(b'{"error":"not found"}', "404 Not Found")


class _TrivialHttp(asyncio.Protocol):
    """Answers every infer with the same bytes; parsing is httptools (C), the rest a dict lookup."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_message_complete(self) -> None:
        if self._url.endswith(b"/infer"):
            self._transport.write(_INFER_REPLY)
        else:
            self._transport.write(_REPLIES.get(self._url, _NOT_FOUND))


def _serve_http(sock: socket.socket) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_TrivialHttp, sock=sock, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())


def _serve_grpc(port: int) -> None:
    import grpc
    import uvloop
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    reply = service_pb2.ModelInferResponse(model_name=MODEL)
    reply.outputs.add(name="y", datatype="FP32", shape=[1, 0])
    metadata = service_pb2.ModelMetadataResponse(name=MODEL, versions=["1"], platform="trivial")
    metadata.inputs.add(name="x", datatype="FP32", shape=[-1, 16])

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return reply

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            return metadata

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            response = service_pb2.ModelConfigResponse()
            response.config.name = MODEL
            response.config.max_batch_size = 8
            return response

    async def main() -> None:
        # grpc core cancels requests beyond 1,000 pending by default: the trivial server must not shed.
        options = [
            ("grpc.server.max_pending_requests", 1 << 20),
            ("grpc.server.max_pending_requests_hard_limit", 1 << 20),
        ]
        server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TrivialServer:
    """A trivial OIP server (``protocol`` "http" or "grpc") in a spawned child process."""

    def __init__(self, protocol: str) -> None:
        context = multiprocessing.get_context("spawn")
        if protocol == "http":
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(4096)
            self.port = sock.getsockname()[1]
            self._process = context.Process(target=_serve_http, args=(sock,), daemon=True)
            self._process.start()
            sock.close()
        else:
            self.port = _free_port()
            self._process = context.Process(target=_serve_grpc, args=(self.port,), daemon=True)
            self._process.start()
        self._wait_listening()

    def _wait_listening(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the trivial server did not start listening on port {self.port}")

    def cpu_s(self) -> float:
        """The server process's CPU time so far (Linux /proc; NaN elsewhere)."""
        assert self._process.pid is not None
        return process_cpu_s(self._process.pid)

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(5)

    def __enter__(self) -> TrivialServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure_ceiling(
    protocol: str,
    *,
    slo_ms: float = 50.0,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    start_rate_per_s: float = 500,
) -> tuple[SearchResult, float]:
    """(goodput search against a trivial server; the server's CPU share of one core over the search)."""
    with TrivialServer(protocol) as server:
        config = BenchConfig(
            models=(ModelLoad(MODEL, rate_per_s=start_rate_per_s, slo_ms=slo_ms),),
            protocol=protocol,
            url=f"http://127.0.0.1:{server.port}",
            grpc_url=f"127.0.0.1:{server.port}",
            duration_s=duration_s,
            warmup_s=warmup_s,
        )
        cpu_start_s, wall_start_s = server.cpu_s(), time.perf_counter()
        found = search(
            config,
            SearchSettings(tolerance=0.05, cooldown_s=0.5),
            on_step=lambda step: print(f"[{protocol}] {render_step(step)}", file=sys.stderr, flush=True),
        )
        server_share = (server.cpu_s() - cpu_start_s) / (time.perf_counter() - wall_start_s)
    return found, server_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("http", "grpc", "both"), default="both")
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--start-rate", type=float, default=500.0)
    args = parser.parse_args()
    for protocol in ("http", "grpc") if args.protocol == "both" else (args.protocol,):
        found, server_share = measure_ceiling(
            protocol, slo_ms=args.slo_ms, duration_s=args.duration, start_rate_per_s=args.start_rate
        )
        print(f"== {protocol}: generator ceiling against a trivial server (SLO {args.slo_ms:g} ms)")
        print(render_search(found))
        print(f"trivial server: {100 * server_share:.0f}% of one core on average over the search")
        print()


if __name__ == "__main__":
    main()

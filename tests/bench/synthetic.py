"""A tiny OIP REST server with a known knee: it serves at most ``rate_per_s`` requests/s and sheds the rest.

Admission is a token bucket (refilled at ``rate_per_s``, holding ``burst`` tokens): an infer request that
finds a token gets 200 at once, one that finds none gets 503, as an SLO-aware server sheds load it
cannot serve. It runs on its own uvloop loop in a daemon thread, on a free loopback port.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httptools
import orjson
import uvloop

MODEL = "limited"
_METADATA = orjson.dumps(
    {
        "name": MODEL,
        "versions": ["1"],
        "platform": "synthetic",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
)


def _reply(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


_OK = _reply("200 OK", orjson.dumps({"model_name": MODEL, "outputs": []}))
_SHED = _reply("503 Service Unavailable", orjson.dumps({"error": "over capacity"}))
_ROUTES = {
    f"/v2/models/{MODEL}".encode(): _reply("200 OK", _METADATA),
    f"/v2/models/{MODEL}/config".encode(): _reply("200 OK", orjson.dumps({"max_batch_size": 8})),
}
_NOT_FOUND = _reply("404 Not Found", orjson.dumps({"error": "unknown model"}))


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._last_s = time.perf_counter()

    def take(self) -> bool:
        now = time.perf_counter()
        self._tokens = min(self.burst, self._tokens + (now - self._last_s) * self.rate_per_s)
        self._last_s = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class _Protocol(asyncio.Protocol):
    def __init__(self, bucket: TokenBucket) -> None:
        self._bucket = bucket
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_message_complete(self) -> None:
        if self._url.endswith(b"/infer"):
            self._transport.write(_OK if self._bucket.take() else _SHED)
        else:
            self._transport.write(_ROUTES.get(self._url, _NOT_FOUND))


class LimitedServer:
    def __init__(self, rate_per_s: float, burst: float = 10) -> None:
        self.bucket = TokenBucket(rate_per_s, burst)
        self._loop = uvloop.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: _Protocol(self.bucket), sock=sock)
        )
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

"""``GET /metrics``: Prometheus' text exposition of a ``ServerMetrics``, as a tiny ASGI app (port 8002)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from squishy.metrics import CONTENT_TYPE, ServerMetrics


class MetricsFrontend:
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain; charset=utf-8")]
        if scope["path"] != "/metrics":
            status, body = 404, b"not found: metrics are at /metrics\n"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"use GET\n"
            headers.append((b"allow", b"GET"))
        else:
            status, body = 200, self._metrics.exposition()
            headers = [(b"content-type", CONTENT_TYPE.encode())]
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body})

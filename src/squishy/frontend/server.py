"""Run the REST (8000), gRPC (8001) and metrics (8002) servers together on one asyncio event loop.

- ``serve(service, ...)``: coroutine for an application that owns its loop; runs until cancelled, then
  shuts down gracefully (stops accepting, lets requests in flight finish for ``grace_s``).
- ``run(service, ...)``: blocking entry point for the CLI: a uvloop loop, SIGINT/SIGTERM stop it.
- ``FrontendServer``: ``await start()`` → bound ports, ``await stop()``; port 0 picks a free port.
- ``start_in_thread(service, ...)``: the same on a background thread with its own loop (tests, notebooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
import uvloop

from squishy.frontend.access import RepositoryControl
from squishy.frontend.arrival import StampingHttpToolsProtocol
from squishy.frontend.door import Door, DoorConfig
from squishy.frontend.grpc import GRPC_OPTIONS, GrpcFrontend, add_to_server
from squishy.frontend.http import DEFAULT_COMPRESS_MIN_BYTES, DEFAULT_MAX_BODY_BYTES, HttpFrontend
from squishy.frontend.metrics_http import MetricsFrontend
from squishy.metrics import ServerMetrics
from squishy.runtime.api import ModelService

logger = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
# Requests in flight get this long to finish after a stop; then they are cancelled.
DEFAULT_GRACE_S = 5.0
# Idle keep-alive connections are closed after this long. Clients (tritonclient, load generators)
# keep connections open between bursts; uvicorn's 5 s default makes them reconnect needlessly.
KEEP_ALIVE_TIMEOUT_S = 75


@dataclass(frozen=True)
class BoundPorts:
    http: int
    grpc: int
    metrics: int | None  # None: no metrics server


class FrontendServer:
    """The three servers over one ``ModelService``. Pass port 0 for a free port; ``None`` skips metrics."""

    def __init__(
        self,
        service: ModelService,
        *,
        host: str = "0.0.0.0",
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int | None = DEFAULT_METRICS_PORT,
        metrics: ServerMetrics | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
        grace_s: float = DEFAULT_GRACE_S,
        log_level: str = "warning",
        control: RepositoryControl | None = None,
        door: DoorConfig | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics if metrics is not None else ServerMetrics()
        # ℓ(1) of a model where the service knows it (the serving core does): the least a request needs.
        alone_ms = getattr(service, "alone_ms", None)
        self.door = Door(door, alone_ms=alone_ms, metrics=self.metrics)
        self._door_probe: asyncio.Task[None] | None = None
        self._host = host
        self._ports = (http_port, grpc_port, metrics_port)
        self._grace_s = grace_s
        self._log_level = log_level
        self._http_app = HttpFrontend(
            service,
            max_body_bytes=max_body_bytes,
            metrics=self.metrics,
            compress_min_bytes=compress_min_bytes,
            control=control,
            door=self.door,
        )
        self._grpc_frontend = GrpcFrontend(service, metrics=self.metrics, control=control, door=self.door)
        self._uvicorns: list[tuple[uvicorn.Server, socket.socket]] = []
        self._grpc_server: grpc.aio.Server | None = None
        self.ports: BoundPorts | None = None

    async def start(self) -> BoundPorts:
        http_port, grpc_port, metrics_port = self._ports
        try:
            bound_http = await self._start_uvicorn(self._http_app, http_port)
            self._grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
            add_to_server(self._grpc_frontend, self._grpc_server)
            try:
                bound_grpc = self._grpc_server.add_insecure_port(_grpc_address(self._host, grpc_port))
            except RuntimeError:  # grpcio reports a failed bind as RuntimeError (older versions: port 0)
                bound_grpc = 0
            if bound_grpc == 0:
                raise OSError(f"cannot bind the gRPC server to {self._host}:{grpc_port}")
            await self._grpc_server.start()
            bound_metrics = None
            if metrics_port is not None:
                bound_metrics = await self._start_uvicorn(MetricsFrontend(self.metrics), metrics_port)
        except BaseException:
            await self.stop(grace_s=0)
            raise
        self.ports = BoundPorts(bound_http, bound_grpc, bound_metrics)
        if self.door.config.enabled:
            self._door_probe = asyncio.create_task(self.door.probe_lag(), name="squishy-door-lag")
        logger.info(
            "squishy serving on %s: HTTP %d, gRPC %d, metrics %s", self._host, bound_http, bound_grpc, bound_metrics
        )
        return self.ports

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, give requests in flight ``grace_s`` to finish, then close everything."""
        grace_s = self._grace_s if grace_s is None else grace_s
        if self._door_probe is not None:
            self._door_probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._door_probe
            self._door_probe = None
        stops = [self._stop_uvicorn(server, sock, grace_s) for server, sock in self._uvicorns]
        if self._grpc_server is not None:
            stops.append(self._grpc_server.stop(grace_s))
        self._uvicorns, self._grpc_server = [], None
        await asyncio.gather(*stops, return_exceptions=True)

    async def _start_uvicorn(self, app: Any, port: int) -> int:
        config = uvicorn.Config(
            app,
            loop="uvloop",
            http=StampingHttpToolsProtocol,  # httptools, with each request's first bytes stamped
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,  # uvicorn would wrap every request in a middleware
            server_header=False,
            date_header=False,  # its refresh needs uvicorn's own main loop, which we do not run
            access_log=False,
            log_config=None,  # leave the application's logging alone
            log_level=self._log_level,
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S,
            timeout_graceful_shutdown=max(1, round(self._grace_s)),
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        sock = _listen_socket(self._host, port)
        try:
            # startup/shutdown rather than serve(): serve() would take over the process's signal handlers.
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._uvicorns.append((server, sock))
        return sock.getsockname()[1]

    @staticmethod
    async def _stop_uvicorn(server: uvicorn.Server, sock: socket.socket, grace_s: float) -> None:
        server.config.timeout_graceful_shutdown = max(0.0, grace_s)  # type: ignore[assignment]
        if grace_s <= 0:
            server.force_exit = True
        await server.shutdown(sockets=[sock])


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(
    service: ModelService, *, on_started: Callable[[BoundPorts], None] | None = None, **options: Any
) -> None:
    """Serve until cancelled, then shut down gracefully. ``options`` are ``FrontendServer``'s keywords;
    ``on_started`` receives the bound ports."""
    server = FrontendServer(service, **options)
    ports = await server.start()
    try:
        if on_started is not None:
            on_started(ports)
        await asyncio.Event().wait()
    finally:
        await server.stop()


def run(service: ModelService, **kwargs: Any) -> None:
    """Blocking: ``serve`` on a new uvloop event loop until SIGINT or SIGTERM (for ``squishy serve``)."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(service, **kwargs)

    uvloop.run(main())


class ThreadedServer:
    """A ``FrontendServer`` running on its own uvloop loop in a daemon thread."""

    def __init__(self, service: ModelService, **kwargs: Any) -> None:
        self._loop = uvloop.new_event_loop()
        self._server = FrontendServer(service, **kwargs)
        self._thread = threading.Thread(target=self._loop.run_forever, name="squishy-frontend", daemon=True)
        self._thread.start()
        try:
            self.ports = asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result()
        except BaseException:
            self._close_loop()
            raise

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def metrics(self) -> ServerMetrics:
        return self._server.metrics

    @property
    def door(self) -> Door:
        return self._server.door

    def stop(self, grace_s: float = 1.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace_s), self._loop).result()
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(service: ModelService, *, host: str = "127.0.0.1", **kwargs: Any) -> ThreadedServer:
    """Start on a background thread (free ports unless given); ``.ports`` has them, ``.stop()`` ends it."""
    kwargs.setdefault("http_port", 0)
    kwargs.setdefault("grpc_port", 0)
    kwargs.setdefault("metrics_port", 0)
    return ThreadedServer(service, host=host, **kwargs)

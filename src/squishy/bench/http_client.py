"""OIP REST load over raw HTTP/1.1 keep-alive connections, on the running (uvloop) event loop.

Why not an HTTP library: a Python client built on httpx and threads tops out near 400 requests/s on a
2-core machine, below what the servers under test sustain. Here each request is one pre-encoded
``bytes`` written to a socket, and each reply is parsed by httptools (C) only as far as the status line
and headers; the body is skipped unless the status is an error, whose JSON message is kept.

Open loop: a connection carries one request at a time (no pipelining: a slow reply would hold up the
ones behind it), and a request that finds every connection busy opens a new one (up to
``max_connections``) or waits in a local FIFO for the first that frees up. Either way its latency is
counted from its scheduled time, so waiting here is never hidden.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Sequence

import httptools
import orjson

from squishy.bench.config import HttpAddress
from squishy.bench.errors import BenchError
from squishy.bench.records import CONNECTION_ERROR, STATUS_OK, Records

_now = time.perf_counter


class HttpLoad:
    """Sends request ``i`` (payload of its model) on a free keep-alive connection, or queues it."""

    def __init__(
        self,
        address: HttpAddress,
        payloads: Sequence[bytes],  # one pre-encoded request per model
        records: Records,
        *,
        initial_connections: int = 16,
        max_connections: int = 1000,
    ) -> None:
        self._address = address
        self._payloads = list(payloads)
        self._records = records
        self._model_index = records.model_index
        self._initial = initial_connections
        self._max = max_connections
        self._idle: list[_Connection] = []  # LIFO: the most recently used connection is the warmest
        self._waiting: deque[int] = deque()
        self._connections: set[_Connection] = set()
        self._opening = 0
        self._growers: set[asyncio.Task[None]] = set()
        self._closing = False
        self.busy = 0
        self.peak_connections = 0
        self.connections_opened = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return self.busy

    async def start(self) -> None:
        """Open the initial connections; fails with one line if the server cannot be reached at all."""
        self._loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(self._connect() for _ in range(self._initial)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == len(results):
            reason = failures[0]
            raise BenchError(
                f"cannot connect to {self._address.host_header}: {getattr(reason, 'strerror', None) or reason}"
            )

    def submit(self, index: int) -> None:
        if self._idle:
            self._idle.pop().send(index, self._payloads[self._model_index[index]])
            return
        self._waiting.append(index)
        self._grow_if_needed()

    async def close(self) -> None:
        """Drop every connection now; requests still out keep their NO_REPLY status."""
        self._closing = True
        for task in self._growers:
            task.cancel()
        for connection in list(self._connections):
            connection.abort()
        # Let the transports deliver connection_lost before the loop goes away.
        for _ in range(3):
            await asyncio.sleep(0)

    # ---------------------------------------------------------------------------- connections

    async def _connect(self) -> None:
        assert self._loop is not None
        self._opening += 1
        try:
            await self._loop.create_connection(lambda: _Connection(self), self._address.host, self._address.port)
        finally:
            self._opening -= 1

    def _grow_if_needed(self) -> None:
        """One new connection per waiting request not already covered by one being opened."""
        if len(self._waiting) > self._opening and len(self._connections) + self._opening < self._max:
            assert self._loop is not None
            # Counted as opening now, not when the task first runs: a burst of submits in one loop
            # iteration must not each see room for a connection of their own.
            self._opening += 1
            task = self._loop.create_task(self._grow_one())
            self._growers.add(task)
            task.add_done_callback(self._growers.discard)

    async def _grow_one(self) -> None:
        assert self._loop is not None
        failed = False
        try:
            await self._loop.create_connection(lambda: _Connection(self), self._address.host, self._address.port)
        except OSError as exc:
            failed = True
            # With connections still open the waiting requests will get one of those (and no retry
            # storm hits a server refusing connections); with none, the server is gone and the oldest
            # waiting request fails rather than waiting forever.
            if not self._connections and self._waiting and not self._closing:
                index = self._waiting.popleft()
                self._records.note_error(CONNECTION_ERROR, f"connect to {self._address.host_header}: {exc}")
                self._records.complete(index, _now(), CONNECTION_ERROR)
        finally:
            self._opening -= 1
        if not self._closing and not (failed and self._connections):
            self._grow_if_needed()

    def _connected(self, connection: _Connection) -> None:
        if self._closing:
            connection.abort()
            return
        self._connections.add(connection)
        self.connections_opened += 1
        self.peak_connections = max(self.peak_connections, len(self._connections))
        self._next(connection)

    def _next(self, connection: _Connection) -> None:
        if self._waiting:
            index = self._waiting.popleft()
            connection.send(index, self._payloads[self._model_index[index]])
        else:
            self._idle.append(connection)

    def _replied(self, connection: _Connection, index: int, reply_s: float, status: int, keep_alive: bool) -> None:
        self.busy -= 1
        self._records.complete(index, reply_s, status)
        if self._closing:
            return
        if keep_alive:
            self._next(connection)
        else:
            connection.abort()

    def _lost(self, connection: _Connection, index: int, exc: Exception | None) -> None:
        self._connections.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        if self._closing:
            return
        if index >= 0:
            self.busy -= 1
            reason = exc or "the server closed the connection"
            self._records.note_error(CONNECTION_ERROR, f"connection to {self._address.host_header} lost: {reason}")
            self._records.complete(index, _now(), CONNECTION_ERROR)
        self._grow_if_needed()


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request on it."""

    __slots__ = ("_body", "_index", "_keep_alive", "_load", "_parser", "_records", "_transport")

    def __init__(self, load: HttpLoad) -> None:
        self._load = load
        self._records = load._records
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._index = -1  # the request on this connection, -1: none
        self._body: bytearray | None = None  # collected only for error replies
        self._keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small requests must leave at once, not wait for Nagle to coalesce them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._load._connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            index, self._index = self._index, -1
            if index >= 0:
                self._load.busy -= 1
                self._records.note_error(CONNECTION_ERROR, f"malformed HTTP reply: {exc}")
                self._records.complete(index, _now(), CONNECTION_ERROR)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        index, self._index = self._index, -1
        self._load._lost(self, index, exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        parser = self._parser
        self._keep_alive = parser.should_keep_alive()
        self._body = None if parser.get_status_code() == STATUS_OK else bytearray()

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body += body

    def on_message_complete(self) -> None:
        reply_s = _now()
        status = self._parser.get_status_code()
        index, self._index = self._index, -1
        if index < 0:
            return  # a reply to no request: nothing to record
        if self._body is not None:
            self._records.note_error(status, _error_message(bytes(self._body)))
            self._body = None
        self._load._replied(self, index, reply_s, status, self._keep_alive)

    # used by HttpLoad
    def send(self, index: int, payload: bytes) -> None:
        self._index = index
        self._load.busy += 1
        self._records.send_s[index] = _now()
        self._transport.write(payload)  # type: ignore[union-attr]

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _error_message(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace").strip() or "(empty body)"
    if isinstance(doc, dict) and "error" in doc:
        return str(doc["error"])
    return str(doc)

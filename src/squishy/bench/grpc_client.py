"""OIP gRPC load with grpc.aio: ``ModelInfer`` with pre-serialized requests, replies never deserialized.

The method is called with serializer and deserializer left out, so grpc sends the request bytes as they
are and hands back the reply as bytes, which are dropped: only the status matters. Requests spread
round-robin over a few channels, each its own HTTP/2 connection, and are never capped by replies.
gRPC status codes are recorded as their HTTP equivalents (Google's standard mapping), so UNAVAILABLE
counts as 503, a drop, exactly as over REST.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc

from squishy.bench.errors import BenchError
from squishy.bench.records import STATUS_OK, Records

_now = time.perf_counter
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# The client sets its limits as tritonclient does: tensors can be large.
_MAX_MESSAGE_BYTES = 2**31 - 1
CONNECT_TIMEOUT_S = 10.0

HTTP_STATUS_OF_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class GrpcLoad:
    """Starts request ``i`` as its own ModelInfer call at once; in flight is bounded only by the schedule."""

    def __init__(self, target: str, payloads: Sequence[bytes], records: Records, *, channels: int = 4) -> None:
        self._target = target
        self._payloads = list(payloads)
        self._records = records
        self._model_index = records.model_index
        self._channel_count = channels
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[grpc.aio.UnaryUnaryMultiCallable] = []
        self._next_channel = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.busy = 0
        self.peak_connections = channels
        self.connections_opened = channels

    @property
    def queued(self) -> int:
        return 0  # HTTP/2 multiplexes: nothing ever waits for a connection here

    @property
    def in_flight(self) -> int:
        return self.busy

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            # Without a channel-local subchannel pool, channels to one target share one connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self._channels = [grpc.aio.insecure_channel(self._target, options=options) for _ in range(self._channel_count)]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(channel.channel_ready() for channel in self._channels)), CONNECT_TIMEOUT_S
            )
        except TimeoutError:
            await self.close()
            raise BenchError(f"cannot connect to the gRPC server at {self._target}") from None
        # No serializers: requests go out as the bytes given, replies come back as bytes.
        self._calls = [channel.unary_unary(MODEL_INFER) for channel in self._channels]

    def submit(self, index: int) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._call(index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, index: int) -> None:
        call = self._calls[self._next_channel]
        self._next_channel = (self._next_channel + 1) % self._channel_count
        records = self._records
        self.busy += 1
        records.send_s[index] = _now()
        try:
            await call(self._payloads[self._model_index[index]])
            status = STATUS_OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            status = HTTP_STATUS_OF_GRPC.get(code, 500)
            records.note_error(status, f"{code.name}: {exc.details()}")
        finally:
            self.busy -= 1
        records.complete(index, _now(), status)

    async def close(self) -> None:
        """Cancel what is still out (it keeps NO_REPLY) and close the channels."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close(grace=None) for channel in self._channels), return_exceptions=True)
        self._channels = []

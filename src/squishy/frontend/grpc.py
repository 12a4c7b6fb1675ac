"""The OIP gRPC API: Triton's ``inference.GRPCInferenceService`` on grpc.aio.

Messages come from ``tritonclient.grpc.service_pb2`` (the reference client's own generated modules), so
the wire format is exactly what Triton's clients speak. Tensors are checked and decoded by the same
``validation`` functions as the REST path. Each ``ServingError`` becomes its gRPC status code; in
``ModelStreamInfer`` errors go into the stream response's ``error_message`` and the stream stays open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from squishy import __version__
from squishy.frontend import model_info, validation
from squishy.frontend.access import RepositoryControl
from squishy.frontend.door import Door, DoorConfig
from squishy.frontend.validation import OutputSelection
from squishy.metrics import ServerMetrics
from squishy.runtime.api import (
    InferRequest,
    InferResponse,
    InvalidRequestError,
    ModelNotFoundError,
    ModelService,
    ModelSpec,
    ServingError,
)

logger = logging.getLogger(__name__)

# The client sets its limits to 2^31-1 bytes; a smaller server limit would reject large tensors.
MAX_MESSAGE_BYTES = 2**31 - 1
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's default SO_REUSEPORT would let a second server share a busy port silently.
    ("grpc.so_reuseport", 0),
    # grpc core CANCELs RPCs beyond 1,000 waiting for a handler, before squishy sees them: under
    # overload clients would get CANCELLED instead of squishy's own UNAVAILABLE admission answer.
    ("grpc.server.max_pending_requests", 1 << 20),
    ("grpc.server.max_pending_requests_hard_limit", 1 << 20),
)

# Typed ``InferTensorContents`` field of each datatype (FP16 has none: it must come raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

T = TypeVar("T")


def _param_value(param: Any) -> Any:
    """An InferParameter / ModelRepositoryParameter as the Python value it holds (None when empty)."""
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


def _params(params: Any) -> dict[str, Any]:
    return {key: _param_value(value) for key, value in params.items()}


def _authorization(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _status(error: ServingError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.grpc_code, grpc.StatusCode.INTERNAL)


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map ServingError to its status code and anything else to INTERNAL (logged) for a unary RPC."""

    @functools.wraps(method)
    async def wrapper(self: GrpcFrontend, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(_status(exc), str(exc))
        except Exception as exc:
            logger.exception("internal error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Await the serving core without passing a client's cancellation into it.

    grpc.aio cancels a handler when its client goes away; the core's queues should not see that
    mid-flight, so the request runs to completion and its answer is dropped.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieve, so nothing is logged
        raise


class GrpcFrontend(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Servicer over a ``ModelService``; ``metrics`` (optional) counts requests rejected here."""

    def __init__(
        self,
        service: ModelService,
        *,
        metrics: ServerMetrics | None = None,
        server_version: str = __version__,
        control: RepositoryControl | None = None,
        door: Door | None = None,
    ) -> None:
        self._service = service
        self._control = control or RepositoryControl()
        self._door = door or Door(DoorConfig(enabled=False))
        self._metrics = metrics
        self._server_version = server_version

    # ------------------------------------------------------------------------------- health

    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self._service.is_live())

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self._service.is_ready())

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version or None))

    # ----------------------------------------------------------------------------- metadata

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=model_info.SERVER_NAME, version=self._server_version, extensions=list(model_info.EXTENSIONS)
        )

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        spec = self._service.model_spec(request.name, request.version or None)
        versions = (
            [spec.version]
            if request.version
            else model_info.versions_of(request.name, self._service.repository_index(), spec)
        )
        return model_info.model_metadata(spec, versions)

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        spec = self._service.model_spec(request.name, request.version or None)
        return service_pb2.ModelConfigResponse(config=model_info.model_config(spec))

    @_rpc
    async def ModelStatistics(self, request: Any, context: Any) -> service_pb2.ModelStatisticsResponse:
        name, version = request.name or None, request.version or None
        stats = self._service.statistics(name, version)
        if name is not None and not stats:
            raise ModelNotFoundError(f"no statistics for model '{name}'" + (f" version {version}" if version else ""))
        return model_info.statistics(stats)

    # ---------------------------------------------------------------------------- repository

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> service_pb2.RepositoryIndexResponse:
        return model_info.repository_index(self._service.repository_index(ready_only=request.ready))

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> service_pb2.RepositoryModelLoadResponse:
        self._control.check(_authorization(context))
        params = _params(request.parameters)
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidRequestError("parameter 'config' must be a string holding the model config as JSON")
        if any(key.startswith("file:") for key in params):
            raise InvalidRequestError("loading a model from files sent in the request is not supported")
        await self._service.load_model(request.model_name, config_override=config)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: Any) -> service_pb2.RepositoryModelUnloadResponse:
        self._control.check(_authorization(context))
        await self._service.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -------------------------------------------------------------------------------- infer

    @_rpc
    async def ModelInfer(self, request: service_pb2.ModelInferRequest, context: Any) -> service_pb2.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Requests are served concurrently; each answer (or error) is written as soon as it is ready."""
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        in_flight: set[asyncio.Task[None]] = set()

        async def answer(request: service_pb2.ModelInferRequest) -> None:
            try:
                message = service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ServingError as exc:
                message = service_pb2.ModelStreamInferResponse(error_message=str(exc))
            except Exception as exc:
                logger.exception("internal error in ModelStreamInfer")
                message = service_pb2.ModelStreamInferResponse(
                    error_message=f"internal error: {type(exc).__name__}: {exc}"
                )
            answers.put_nowait(message)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            finally:
                if in_flight:
                    await asyncio.wait(set(in_flight))
                answers.put_nowait(None)  # the client closed its side and every answer is written

        reader = asyncio.create_task(read())
        try:
            while (message := await answers.get()) is not None:
                yield message
        finally:
            reader.cancel()

    async def _infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        arrival_ms = time.monotonic() * 1000.0
        version = request.model_version or None
        spec = self._service.model_spec(request.model_name, version)
        door = self._door
        # grpc.aio hands over a decoded message, so no earlier stamp exists: the request reached the
        # machine about the loop's lag ago.
        arrival_ms -= door.lag_ms(arrival_ms)
        door.admit(spec, arrival_ms)
        try:
            return await self._admitted(request, spec, version, arrival_ms)
        finally:
            door.finished(spec)

    async def _admitted(
        self, request: service_pb2.ModelInferRequest, spec: ModelSpec, version: str | None, arrival_ms: float
    ) -> service_pb2.ModelInferResponse:
        try:
            infer_request, selections = _parse_infer(request, spec, version, arrival_ms)
        except InvalidRequestError:
            if self._metrics is not None:
                self._metrics.record_request(spec.name, spec.version, "failed", reason="OTHER")
            raise
        self._door.admit(spec, arrival_ms, parsed=True, priority=infer_request.priority)  # priority levels: judged now
        response = await _shielded(self._service.infer(infer_request))
        return _encode_infer(response, spec, selections, request.id)


def _parse_infer(
    request: service_pb2.ModelInferRequest, spec: ModelSpec, version: str | None, arrival_ms: float
) -> tuple[InferRequest, list[OutputSelection]]:
    options = validation.parse_request_parameters(_params(request.parameters))
    headers = []
    for tensor in request.inputs:
        shape = validation.check_shape_values(tensor.name, tuple(tensor.shape))
        if tensor.parameters:
            validation.input_binary_size(tensor.name, _params(tensor.parameters))
        headers.append((tensor.name, tensor.datatype, shape))
    validation.check_inputs(spec, headers)

    inputs = {}
    raw = request.raw_input_contents
    if raw:
        if len(raw) != len(request.inputs):
            raise InvalidRequestError(
                f"the request has {len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
                "send one per input, in input order"
            )
        for tensor, (name, datatype, shape), data in zip(request.inputs, headers, raw, strict=True):
            if tensor.HasField("contents"):
                raise InvalidRequestError(f"input '{name}' has both contents and raw_input_contents")
            inputs[name] = validation.decode_binary(name, datatype, shape, data)
    else:
        for tensor, (name, datatype, shape) in zip(request.inputs, headers, strict=True):
            field = _CONTENTS_FIELD.get(datatype)
            if field is None:
                raise InvalidRequestError(f"{datatype} input '{name}' must be sent in raw_input_contents")
            inputs[name] = validation.decode_values(name, datatype, shape, getattr(tensor.contents, field))

    requested = [(output.name, _params(output.parameters)) for output in request.outputs]
    # gRPC always carries outputs raw (raw_output_contents); "binary" only matters to REST.
    selections = validation.select_outputs(spec, requested, binary_default=True)
    infer_request = InferRequest(
        model_name=request.model_name,
        model_version=version,
        inputs=inputs,
        requested_outputs=tuple(s.name for s in selections) if requested else (),
        request_id=request.id,
        priority=options.priority,
        timeout_us=options.timeout_us,
        arrival_ms=arrival_ms,
        parameters=options.custom,
    )
    return infer_request, selections


def _encode_infer(
    response: InferResponse, spec: ModelSpec, selections: list[OutputSelection], request_id: str
) -> service_pb2.ModelInferResponse:
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name or spec.name, model_version=response.model_version, id=request_id
    )
    for key, value in response.parameters.items():
        message.parameters[key].string_param = value
    for selection in selections:
        datatype, array = validation.prepare_output(spec, selection, response.outputs.get(selection.name))
        message.outputs.add(name=selection.name, datatype=datatype, shape=array.shape)
        message.raw_output_contents.append(bytes(validation.tensor_bytes(datatype, array)))
    return message


def _unimplemented(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: GrpcFrontend, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by squishy")

    method.__name__ = name
    return method


# Shared memory, tracing and logging RPCs: answered UNIMPLEMENTED with a clear message (the generated
# base class would raise NotImplementedError, which surfaces as a confusing "Unexpected" error).
for _method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in GrpcFrontend.__dict__:
        setattr(GrpcFrontend, _method.name, _unimplemented(_method.name))


def add_to_server(frontend: GrpcFrontend, server: grpc.aio.Server) -> None:
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(frontend, server)

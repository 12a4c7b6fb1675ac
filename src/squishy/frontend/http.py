"""The OIP REST API (KServe v2 / Triton) as a lean ASGI app, meant for uvicorn with uvloop and httptools.

No web framework: the path is split once, the handful of headers that matter are picked out of the
scope, and JSON goes through orjson. Every ``ServingError`` becomes its HTTP status with body
``{"error": "<message>"}``; anything else becomes a 500 and is logged, and the server keeps serving.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from squishy import __version__
from squishy.frontend import codec, model_info
from squishy.frontend.access import RepositoryControl
from squishy.frontend.arrival import ADMITTED_KEY, RECEIVED_KEY
from squishy.frontend.door import Door, DoorConfig, ShedError
from squishy.metrics import ServerMetrics
from squishy.runtime.api import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelService,
    ModelSpec,
    PayloadTooLargeError,
    ServingError,
)

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Responses smaller than this go out uncompressed even when the client accepts gzip: compressing a few
# hundred bytes costs more CPU than it saves on the wire.
DEFAULT_COMPRESS_MIN_BYTES = 1024

_JSON = [(b"content-type", b"application/json")]
_BINARY = [(b"content-type", b"application/octet-stream")]
_CLOSE = [(b"connection", b"close")]
_SHED_HEAD = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: "


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: there is nobody to answer."""


class _MethodNotAllowed(ServingError):
    http_status = 405

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"method {method} is not allowed here; use {allowed}")
        self.allow = allowed.encode()


class _NotFound(ServingError):
    http_status = 404


Response = tuple[int, bytes | list[bytes | memoryview], Headers]


def _json(status: int, doc: Any) -> Response:
    return status, orjson.dumps(doc), _JSON


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI 3 description of this REST surface, shipped in the package (``openapi.json``)."""
    return importlib.resources.files("squishy.frontend").joinpath("openapi.json").read_bytes()


class HttpFrontend:
    """ASGI app for ``/v2/...``. ``service`` is the serving core; ``metrics`` (optional) counts rejects."""

    def __init__(
        self,
        service: ModelService,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        metrics: ServerMetrics | None = None,
        compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
        server_version: str = __version__,
        control: RepositoryControl | None = None,
        door: Door | None = None,
    ) -> None:
        self._service = service
        self._control = control or RepositoryControl()
        self._door = door or Door(DoorConfig(enabled=False))
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        self._compress_min_bytes = compress_min_bytes
        self._server_metadata = orjson.dumps(
            {"name": model_info.SERVER_NAME, "version": server_version, "extensions": list(model_info.EXTENSIONS)}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        try:
            status, body, headers = await self._dispatch(scope, receive)
        except _ClientGone:
            return
        except ServingError as exc:
            status, body, headers = _json(exc.http_status, {"error": str(exc)})
            if isinstance(exc, PayloadTooLargeError):
                # The rest of the body was never read: close rather than parse it as the next request.
                headers = headers + _CLOSE
            elif isinstance(exc, _MethodNotAllowed):
                headers = [*headers, (b"allow", exc.allow)]
        except Exception as exc:
            logger.exception("internal error serving %s %s", scope.get("method"), scope.get("path"))
            status, body, headers = _json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        if isinstance(body, list):
            length = sum(len(chunk) for chunk in body)
            body = body[0] if len(body) == 1 else b"".join(body)
        else:
            length = len(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(length).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # --------------------------------------------------------------------------------- routing

    async def _dispatch(self, scope: Scope, receive: Receive) -> Response:
        method = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("utf-8", "replace")
        # Model names arrive percent-encoded (tritonclient quotes them); split first so "%2F" stays in the name.
        parts = [unquote(p) for p in path.split("/")[1:]] if "%" in path else path.split("/")[1:]
        if not parts or parts[0] != "v2":
            raise _NotFound(f"unknown path {scope['path']}")
        parts = parts[1:]
        n = len(parts)

        if n == 0:
            self._allow(method, "GET")
            return 200, self._server_metadata, _JSON
        head = parts[0]
        if head == "openapi.json" and n == 1:
            self._allow(method, "GET")
            return 200, openapi_document(), _JSON
        if head == "health" and n == 2:
            self._allow(method, "GET")
            if parts[1] == "live":
                live = self._service.is_live()
                return _json(200 if live else 503, {"live": live})
            if parts[1] == "ready":
                ready = self._service.is_ready()
                return _json(200 if ready else 503, {"ready": ready})
        elif head == "models" and n >= 2:
            if n == 2 and parts[1] == "stats":
                self._allow(method, "GET")
                return self._statistics(None, None)
            model, version, rest = parts[1], None, parts[2:]
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1] or None, rest[2:]
            if not rest:
                self._allow(method, "GET")
                return self._metadata(model, version)
            if len(rest) == 1:
                action = rest[0]
                if action == "infer":
                    self._allow(method, "POST")
                    return await self._infer(scope, receive, model, version)
                if action == "ready":
                    self._allow(method, "GET")
                    return self._model_ready(model, version)
                if action == "config":
                    self._allow(method, "GET")
                    spec = self._service.model_spec(model, version)
                    return _json(200, model_info.message_to_json(model_info.model_config(spec)))
                if action == "stats":
                    self._allow(method, "GET")
                    return self._statistics(model, version)
        elif head == "repository":
            if n == 2 and parts[1] == "index":
                self._allow(method, "POST")
                return await self._repository_index(scope, receive)
            if n == 4 and parts[1] == "models" and parts[3] in ("load", "unload"):
                self._allow(method, "POST")
                return await self._load_or_unload(scope, receive, parts[2], parts[3])
        raise _NotFound(f"unknown path {scope['path']}")

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method == allowed or (method == "HEAD" and allowed == "GET"):
            return
        raise _MethodNotAllowed(method, allowed)

    # ------------------------------------------------------------------------------- handlers

    def _metadata(self, model: str, version: str | None) -> Response:
        spec = self._service.model_spec(model, version)
        versions = [spec.version] if version else model_info.versions_of(model, self._service.repository_index(), spec)
        return _json(200, model_info.model_metadata_json(spec, versions))

    def _model_ready(self, model: str, version: str | None) -> Response:
        try:
            self._service.model_spec(model, version)
        except ModelNotFoundError:
            raise  # unknown model or version: 404, as for every other model endpoint
        except ServingError:
            pass  # known but not ready: answered below
        ready = self._service.model_ready(model, version)
        # Status carries the answer (KServe: 200 true, 4xx false); the body names the model as well.
        return _json(200 if ready else 400, {"name": model, "ready": ready})

    def _statistics(self, model: str | None, version: str | None) -> Response:
        stats = self._service.statistics(model, version)
        if model is not None and not stats:
            raise ModelNotFoundError(f"no statistics for model '{model}'" + (f" version {version}" if version else ""))
        return _json(200, model_info.message_to_json(model_info.statistics(stats)))

    async def _repository_index(self, scope: Scope, receive: Receive) -> Response:
        doc = await self._json_body(scope, receive)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequestError(f"'ready' must be a boolean, got {ready!r}")
        return _json(200, model_info.repository_index_json(self._service.repository_index(ready_only=ready)))

    async def _load_or_unload(self, scope: Scope, receive: Receive, model: str, action: str) -> Response:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        self._control.check(authorization.decode("latin-1") if authorization is not None else None)
        doc = await self._json_body(scope, receive)
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequestError("'parameters' must be a JSON object")
        if action == "unload":
            await self._service.unload_model(model)
            return 200, b"", _JSON
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidRequestError("parameter 'config' must be a string holding the model config as JSON")
        if any(key.startswith("file:") for key in params):
            raise InvalidRequestError("loading a model from files sent in the request is not supported")
        await self._service.load_model(model, config_override=config)
        return 200, b"", _JSON

    async def _infer(self, scope: Scope, receive: Receive, model: str, version: str | None) -> Response:
        received_s = scope.get(RECEIVED_KEY)
        arrival_ms = (received_s if received_s is not None else time.monotonic()) * 1000.0
        content_length = header_length = content_encoding = accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                content_length = value
            elif name == b"inference-header-content-length":
                header_length = value
            elif name == b"content-encoding":
                content_encoding = value.decode("latin-1")
            elif name == b"accept-encoding":
                accept_encoding = value.decode("latin-1")
        spec = self._service.model_spec(model, version)  # unknown model: 404 before reading the body
        door = self._door
        if not scope.get(ADMITTED_KEY):  # not judged by shed_early (percent-encoded path, pipelined)
            door.admit(spec, arrival_ms)  # shed: 503 before the body is read or decoded
        try:
            return await self._admitted(receive, spec, model, version, arrival_ms, content_length, header_length,
                                        content_encoding, accept_encoding)  # fmt: skip
        finally:
            door.finished(spec)

    def shed_early(self, method: bytes, url: bytes, received_s: float, scope: Scope) -> bytes | None:
        """The door's verdict on an infer request whose headers were just parsed, before any ASGI work
        (``squishy.frontend.arrival``): the complete 503 response if it is shed, else None (the request
        goes on, marked as admitted). Anything unusual is left to the normal path."""
        door = self._door
        if not door.config.enabled or method != b"POST":
            return None
        path = url.split(b"?", 1)[0]
        if not path.endswith(b"/infer") or b"%" in path:
            return None
        parts = path.split(b"/")
        if len(parts) == 5 and parts[1] == b"v2" and parts[2] == b"models":
            name, version = parts[3], b""
        elif len(parts) == 7 and parts[1] == b"v2" and parts[2] == b"models" and parts[4] == b"versions":
            name, version = parts[3], parts[5]
        else:
            return None
        try:
            spec = self._service.model_spec(name.decode(), version.decode() or None)
        except (ServingError, UnicodeDecodeError):
            return None  # the normal path answers it (404, 400)
        try:
            door.admit(spec, received_s * 1000.0)
        except ShedError as shed:
            body = orjson.dumps({"error": str(shed)})
            return _SHED_HEAD + str(len(body)).encode() + b"\r\n\r\n" + body
        scope[ADMITTED_KEY] = True
        return None

    async def _admitted(
        self,
        receive: Receive,
        spec: ModelSpec,
        model: str,
        version: str | None,
        arrival_ms: float,
        content_length: bytes | None,
        header_length: bytes | None,
        content_encoding: str | None,
        accept_encoding: str | None,
    ) -> Response:
        body = await self._read_body(receive, content_length)
        try:
            body = codec.decode_content(body, content_encoding, self._max_body_bytes)
            request, selections = codec.parse_infer_request(
                body, _header_length(header_length), spec, model, version, arrival_ms
            )
        except InvalidRequestError:
            if self._metrics is not None:
                self._metrics.record_request(spec.name, spec.version, "failed", reason="OTHER")
            raise
        self._door.admit(spec, arrival_ms, parsed=True, priority=request.priority)  # priority levels: judged now
        response = await self._service.infer(request)
        chunks, json_length = codec.encode_infer_response(response, spec, selections, request.request_id)
        headers = (
            _JSON
            if json_length is None
            else [*_BINARY, (b"inference-header-content-length", str(json_length).encode())]
        )
        encoding = codec.pick_response_encoding(accept_encoding)
        if encoding is not None and sum(len(c) for c in chunks) >= self._compress_min_bytes:
            chunks = [codec.compress(chunks, encoding)]
            headers = [*headers, (b"content-encoding", encoding.encode())]
        return 200, chunks, headers

    # -------------------------------------------------------------------------------- bodies

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes:
        limit = self._max_body_bytes
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise InvalidRequestError(f"bad Content-Length {content_length!r}") from None
            if declared > limit:
                raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit}-byte limit")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body  # the common case: the whole body in one message, no copy
        chunks, size = [body], len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # chunked uploads have no Content-Length to check up front
                raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """A small JSON object body; an empty body counts as ``{}`` (tritonclient sends none)."""
        content_length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        body = await self._read_body(receive, content_length)
        if not body.strip():
            return {}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"malformed JSON in the request body: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidRequestError("the request body must be a JSON object")
        return doc


def _header_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"Inference-Header-Content-Length must be an integer, got {value!r}") from None

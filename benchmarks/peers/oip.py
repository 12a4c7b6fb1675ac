"""The OIP REST pieces every peer shares, taken from squishy itself so all servers pay the same wire cost.

Models come from the same repository squishy serves (``ModelRepository``: config.pbtxt + ONNX graph),
requests are decoded and validated by ``squishy.frontend.codec`` (binary tensor extension included),
replies are encoded by it too, and the executor is squishy's ``OnnxRuntimeExecutor`` (same session
options: 1 intra-op thread, sequential, all graph optimizations, no spinning). What differs between the
servers is only how requests reach the executor: that is what the benchmark compares.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from squishy.frontend import codec, model_info
from squishy.frontend.validation import OutputSelection
from squishy.runtime.api import (
    InferRequest,
    InferResponse,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelSpec,
    ServingError,
)
from squishy.runtime.executors import OnnxRuntimeExecutor
from squishy.runtime.repository import ModelRepository

# As squishy's own default (--max-body-mb 64): a larger body is refused, not decompressed.
MAX_BODY_BYTES = 64 * 1024 * 1024
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class ModelTable:
    """The ready models of a repository (newest version each), their metadata and their wire codec."""

    def __init__(self, repository: str | Path, only: Sequence[str] = ()) -> None:
        repo = ModelRepository(repository)
        for name in only or repo.model_names():
            repo.load(name)
        self.specs: dict[str, ModelSpec] = {}
        for spec in repo.ready_specs():  # oldest first: the newest version of a model wins
            if not only or spec.name in only:
                self.specs[spec.name] = spec
        self._metadata = {
            name: orjson.dumps(model_info.model_metadata_json(spec, [spec.version]))
            for name, spec in self.specs.items()
        }
        self._config = {
            name: orjson.dumps(model_info.message_to_json(model_info.model_config(spec)))
            for name, spec in self.specs.items()
        }

    def spec(self, model: str) -> ModelSpec:
        try:
            return self.specs[model]
        except KeyError:
            raise ModelNotFoundError(f"unknown model {model!r}") from None

    def metadata(self, model: str) -> bytes:
        self.spec(model)
        return self._metadata[model]

    def config(self, model: str) -> bytes:
        self.spec(model)
        return self._config[model]

    def decode(
        self, model: str, body: bytes, header_length: str | None, content_encoding: str | None
    ) -> tuple[InferRequest, list[OutputSelection]]:
        """A REST infer body → the validated request and the outputs to return (raises ServingError)."""
        spec = self.spec(model)
        length: int | None = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidRequestError(f"bad Inference-Header-Content-Length {header_length!r}") from None
        data = codec.decode_content(body, content_encoding, MAX_BODY_BYTES)
        return codec.parse_infer_request(data, length, spec, model, None, time.monotonic())

    def encode(
        self,
        request: InferRequest,
        selections: Sequence[OutputSelection],
        outputs: dict[str, np.ndarray],
    ) -> Reply:
        spec = self.spec(request.model_name)
        response = InferResponse(spec.name, spec.version, outputs, request.request_id)
        chunks, json_length = codec.encode_infer_response(response, spec, selections, request.request_id)
        body = b"".join(chunks)
        if json_length is None:
            return Reply(200, body, {"content-type": "application/json"})
        return Reply(
            200, body, {"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)}
        )


def error_reply(exc: Exception) -> Reply:
    """OIP's error shape: the status of the ServingError (500 for anything else) and {"error": message}."""
    status = exc.http_status if isinstance(exc, ServingError) else 500
    message = str(exc) if isinstance(exc, ServingError) else f"internal error: {type(exc).__name__}: {exc}"
    return Reply(status, orjson.dumps({"error": message}), {"content-type": "application/json"})


def executor(spec: ModelSpec) -> OnnxRuntimeExecutor:
    """squishy's executor with one intra-op thread: the peers get exactly squishy's per-slot setting."""
    return OnnxRuntimeExecutor(spec, threads=1)


def run_one(runner: OnnxRuntimeExecutor, request: InferRequest) -> dict[str, np.ndarray]:
    return runner.run(request.inputs)


def run_batch(runner: OnnxRuntimeExecutor, requests: Sequence[InferRequest]) -> list[dict[str, np.ndarray]]:
    """Run several requests as one batch (inputs joined along the batch dimension) and split the outputs."""
    if len(requests) == 1:
        return [runner.run(requests[0].inputs)]
    if runner.spec.max_batch_size <= 0:
        return [runner.run(r.inputs) for r in requests]
    names = [t.name for t in runner.spec.inputs]
    joined = {name: np.concatenate([r.inputs[name] for r in requests]) for name in names}
    outputs = runner.run(joined)
    sizes = [r.batch_size for r in requests]
    ends = np.cumsum(sizes)
    split: list[dict[str, np.ndarray]] = [{} for _ in requests]
    for name, array in outputs.items():
        if array.shape[0] != ends[-1]:
            raise InternalError(
                f"model {runner.spec.name!r}: output {name!r} has {array.shape[0]} rows for a batch of {ends[-1]}"
            )
        for i, part in enumerate(np.split(array, ends[:-1])):
            split[i][name] = part
    return split

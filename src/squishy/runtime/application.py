"""Applications written in Python: a model whose answer is code that calls other models.

For what an ensemble's fixed graph cannot say, such as one recognizer call per box a detector found, a
repository model may be ``platform: "squishy_application"`` with ``<model>/<version>/application.py``:

    CALLS = {"detector": {"recognizer": {}}}     # the call tree: which model's results feed which calls

    async def execute(inputs, call):
        boxes = (await call("detector", {"image": inputs["image"]}))["boxes"]
        texts = await asyncio.gather(*(call("recognizer", {"crop": crop(inputs["image"], b)}) for b in boxes))
        return {"texts": ...}

``inputs`` holds the request's tensors (numpy arrays, as its config declares them); ``call(model,
inputs, version=None)`` sends one request to a model of the repository and returns its outputs. Each call
is an ordinary request to an ordinary squishy session, so it batches with everyone else's, and it gets
what is left of the application's end-to-end deadline: a call that cannot finish in it is refused at
once, and an ``execute`` still running at the deadline is cancelled and answered 503.

``CALLS`` is optional. With it, the server counts each edge's fan-out γ (child calls per parent call),
the tree that query analysis splits the SLO over. The code runs only from the repository the server was
started with (loading it through the control API needs ``--model-control explicit``), as Triton's
Python backend does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from squishy.runtime.api import (
    DATATYPES,
    InferRequest,
    InferResponse,
    InternalError,
    ModelSpec,
    ServingError,
    UnavailableError,
)

PLATFORM_APPLICATION = "squishy_application"
APPLICATION_FILENAME = "application.py"

Infer = Callable[[InferRequest], Awaitable[InferResponse]]
Call = Callable[..., Awaitable[dict[str, np.ndarray]]]


class ApplicationLoadError(ValueError):
    """The module cannot serve: it does not import, has no ``async def execute``, or a bad ``CALLS``."""


@dataclass
class Application:
    spec: ModelSpec
    execute: Callable[[dict[str, np.ndarray], Call], Awaitable[Mapping[str, Any]]]
    edges: tuple[tuple[str, str], ...]  # (parent model, child model) of the declared call tree
    # Since the last ``roll`` (the control loop rolls once an epoch): the fan-out is what it is now.
    requests: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # model → calls made to it

    @classmethod
    def load(cls, spec: ModelSpec) -> Application:
        if spec.model_path is None:
            raise ApplicationLoadError(f"{spec.name}: no {APPLICATION_FILENAME}")
        module = _import(spec.model_path, f"squishy_application_{spec.name}_{spec.version}")
        execute = getattr(module, "execute", None)
        if execute is None or not inspect.iscoroutinefunction(execute):
            raise ApplicationLoadError(
                f"{spec.name}: {spec.model_path.name} must define `async def execute(inputs, call)`"
            )
        return cls(spec, execute, _edges(getattr(module, "CALLS", {}), spec.name))

    def roll(self) -> None:
        """Start a new measurement window."""
        self.requests = 0
        self.calls = {}

    def fan_out(self) -> dict[tuple[str, str], float]:
        """Each declared edge's γ in the current window: calls to the child per call to the parent (the
        root's parent is the application itself, called once per request)."""
        out = {}
        for parent, child in self.edges:
            parent_calls = self.requests if parent == self.spec.name else self.calls.get(parent, 0)
            out[(parent, child)] = self.calls.get(child, 0) / parent_calls if parent_calls else 0.0
        return out

    async def run(
        self, request: InferRequest, deadline_ms: float, infer: Infer, now_ms: Callable[[], float]
    ) -> InferResponse:
        name = self.spec.name
        self.requests += 1

        async def call(
            model: str, inputs: Mapping[str, np.ndarray], version: str | None = None
        ) -> dict[str, np.ndarray]:
            left_ms = deadline_ms - now_ms()
            if left_ms <= 0:
                raise UnavailableError(f"application {name!r}: its deadline passed before a call to {model!r}")
            self.calls[model] = self.calls.get(model, 0) + 1
            arrays = {key: np.asarray(value) for key, value in inputs.items()}
            sub = InferRequest(model, version, arrays, request_id=request.request_id, priority=request.priority,
                               timeout_us=max(1, int(left_ms * 1000.0)))  # fmt: skip
            try:
                response = await infer(sub)
            except ServingError as error:
                raise type(error)(f"application {name!r}, call to {model!r}: {error}") from None
            return response.outputs

        left_s = max(0.0, (deadline_ms - now_ms()) / 1000.0)
        try:
            produced = await asyncio.wait_for(self.execute(dict(request.inputs), call), timeout=left_s)
        except TimeoutError:
            raise UnavailableError(
                f"application {name!r} did not finish within its {self.spec.slo_ms:g} ms deadline"
            ) from None
        except ServingError:
            raise
        except Exception as error:  # the application's own bug: a 500 that says where
            raise InternalError(f"application {name!r} failed: {type(error).__name__}: {error}") from None
        outputs = _outputs(self.spec, produced, request.requested_outputs)
        return InferResponse(name, self.spec.version, outputs, request.request_id)


def _import(path: Path, module_name: str) -> ModuleType:
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ApplicationLoadError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:
        raise ApplicationLoadError(f"{path.name} does not import: {type(error).__name__}: {error}") from None
    sys.modules.pop(module_name, None)  # a reload imports the file afresh
    return module


def _edges(calls: object, name: str) -> tuple[tuple[str, str], ...]:
    """The edges of a declared call tree (nested dicts of model names), the application as the root."""
    if not isinstance(calls, Mapping):
        raise ApplicationLoadError(f"{name}: CALLS must be a dict of model names to their own calls")
    edges: list[tuple[str, str]] = []

    def visit(parent: str, children: Mapping[Any, Any]) -> None:
        for child, grandchildren in children.items():
            if not isinstance(child, str) or not isinstance(grandchildren, Mapping):
                raise ApplicationLoadError(f"{name}: CALLS must nest dicts keyed by model names, got {child!r}")
            edges.append((parent, child))
            visit(child, grandchildren)

    visit(name, calls)
    return tuple(edges)


def _outputs(spec: ModelSpec, produced: object, requested: Any) -> dict[str, np.ndarray]:
    """The declared outputs the application returned, checked: a missing or mistyped one is its bug."""
    if not isinstance(produced, Mapping):
        raise InternalError(f"application {spec.name!r} returned {type(produced).__name__}, not a dict of outputs")
    wanted = list(requested) or [t.name for t in spec.outputs]
    declared = {t.name: t for t in spec.outputs}
    out = {}
    for name in wanted:
        if name not in produced:
            raise InternalError(f"application {spec.name!r} returned no output {name!r}")
        array = np.asarray(produced[name])
        tensor = declared.get(name)
        dtype = DATATYPES.get(tensor.datatype) if tensor is not None else None
        if dtype is not None and tensor is not None and tensor.datatype != "BYTES" and array.dtype != dtype:
            raise InternalError(
                f"application {spec.name!r}: output {name!r} is {array.dtype}, its config declares {tensor.datatype}"
            )
        out[name] = array
    return out

"""Triton ensembles: a model that is a graph of other models' calls, written as Triton's docs show.

A config with ``platform: "ensemble"`` and ``ensemble_scheduling { step [...] }`` is read as it is: each
step names a model (and optionally a version), an ``input_map`` from the step model's input names to
ensemble tensors, and an ``output_map`` from the step model's output names to ensemble tensors. A step
runs once every tensor it reads exists; steps that become runnable together run concurrently.

Every step is an ordinary request to an ordinary squishy session, so it batches with everyone else's
requests to that model. The ensemble's deadline is end to end: each step is sent with what is left of
it (Triton's ``timeout``), so a step that runs fast leaves the slack to the next, and a step that cannot
finish in what is left is refused at once instead of running late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from squishy.runtime.api import (
    InferRequest,
    InferResponse,
    InternalError,
    ModelSpec,
    ServingError,
    UnavailableError,
)

PLATFORM_ENSEMBLE = "ensemble"


class EnsembleConfigError(ValueError):
    """An ensemble config that cannot run: the message names the step and the tensor."""


@dataclass(frozen=True)
class Ensemble:
    spec: ModelSpec
    steps: tuple[EnsembleStep, ...]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Ensemble:
        return cls(spec, ensemble_steps(spec.config, spec.name))


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    version: str  # "" (or Triton's -1): the newest ready version
    inputs: Mapping[str, str]  # the step model's input name → the ensemble tensor it reads
    outputs: Mapping[str, str]  # the step model's output name → the ensemble tensor it writes

    @property
    def label(self) -> str:
        return f"{self.model}" + (f" version {self.version}" if self.version else "")


def ensemble_steps(config: object, name: str) -> tuple[EnsembleStep, ...]:
    """The steps of an ensemble config (a ModelConfig protobuf), checked: every tensor a step reads is an
    ensemble input or written by another step, each tensor is written once, no step waits on itself,
    and every ensemble output is written. Raises EnsembleConfigError."""
    scheduling = getattr(config, "ensemble_scheduling", None)
    entries = list(scheduling.step) if scheduling is not None else []
    if not entries:
        raise EnsembleConfigError(f"{name}: platform ensemble needs ensemble_scheduling with at least one step")
    steps = []
    for index, entry in enumerate(entries):
        if not entry.model_name:
            raise EnsembleConfigError(f"{name}: ensemble step {index} names no model_name")
        if entry.model_name == name:
            raise EnsembleConfigError(f"{name}: an ensemble cannot call itself (step {index})")
        version = "" if entry.model_version in (-1, 0) else str(entry.model_version)
        if entry.model_version < -1:
            raise EnsembleConfigError(f"{name}: step {index} ({entry.model_name}): model_version {entry.model_version}")
        if not entry.output_map:
            raise EnsembleConfigError(f"{name}: step {index} ({entry.model_name}) maps no outputs")
        steps.append(EnsembleStep(entry.model_name, version, dict(entry.input_map), dict(entry.output_map)))
    inputs = [t.name for t in config.input]  # type: ignore[attr-defined]
    outputs = [t.name for t in config.output]  # type: ignore[attr-defined]
    written: dict[str, str] = {tensor: "the ensemble's input" for tensor in inputs}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in written:
                raise EnsembleConfigError(
                    f"{name}: tensor {tensor!r} is written by {written[tensor]} and by step {step.label}"
                )
            written[tensor] = f"step {step.label}"
    for step in steps:
        for tensor in step.inputs.values():
            if tensor not in written:
                raise EnsembleConfigError(f"{name}: step {step.label} reads {tensor!r}, which no step writes")
    for tensor in outputs:
        if tensor not in written:
            raise EnsembleConfigError(f"{name}: ensemble output {tensor!r} is written by no step")
    _order(steps, inputs, name)  # raises on a cycle
    return tuple(steps)


def _order(steps: Sequence[EnsembleStep], inputs: Sequence[str], name: str) -> list[list[EnsembleStep]]:
    """The steps in waves: each wave's steps read only tensors written before it."""
    available = set(inputs)
    pending = list(steps)
    waves = []
    while pending:
        wave = [s for s in pending if all(t in available for t in s.inputs.values())]
        if not wave:
            stuck = ", ".join(s.label for s in pending)
            raise EnsembleConfigError(f"{name}: steps {stuck} wait on each other (a cycle)")
        waves.append(wave)
        for step in wave:
            available.update(step.outputs.values())
        pending = [s for s in pending if s not in wave]
    return waves


def ensemble_waves(ensemble: Ensemble) -> list[list[EnsembleStep]]:
    """The ensemble's steps in the order they run: each wave reads only what earlier waves wrote."""
    return _order(ensemble.steps, [t.name for t in ensemble.spec.inputs], ensemble.spec.name)


Infer = Callable[[EnsembleStep, InferRequest], Awaitable[InferResponse]]


async def run_ensemble(
    name: str,
    version: str,
    steps: Sequence[EnsembleStep],
    output_names: Sequence[str],
    request: InferRequest,
    deadline_ms: float,
    infer: Infer,
    now_ms: Callable[[], float],
) -> InferResponse:
    """Run one ensemble request: each wave of steps concurrently, each step with what is left of the
    deadline (``now_ms``: the serving clock). A failing step fails the request with that step's error
    (its status kept), named."""
    tensors: dict[str, np.ndarray] = dict(request.inputs)
    for wave in _order(steps, list(request.inputs), name):
        left_ms = deadline_ms - now_ms()
        if left_ms <= 0:
            raise UnavailableError(f"ensemble {name!r}: its deadline passed before step {wave[0].label}")
        calls = [infer(step, _step_request(step, tensors, request, left_ms)) for step in wave]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for step, result in zip(wave, results, strict=True):
            if isinstance(result, BaseException):
                raise _step_error(name, step, result) from None
            for step_output, tensor in step.outputs.items():
                if step_output not in result.outputs:
                    raise InternalError(f"ensemble {name!r}: step {step.label} returned no {step_output!r}")
                tensors[tensor] = result.outputs[step_output]
    wanted = list(request.requested_outputs) or list(output_names)
    return InferResponse(name, version, {tensor: tensors[tensor] for tensor in wanted}, request.request_id)


def _step_request(
    step: EnsembleStep, tensors: Mapping[str, np.ndarray], request: InferRequest, left_ms: float
) -> InferRequest:
    return InferRequest(
        model_name=step.model,
        model_version=step.version or None,
        inputs={step_input: tensors[tensor] for step_input, tensor in step.inputs.items()},
        requested_outputs=list(step.outputs),
        request_id=request.request_id,
        priority=request.priority,
        timeout_us=max(1, int(left_ms * 1000.0)),
    )


def _step_error(name: str, step: EnsembleStep, error: BaseException) -> ServingError:
    message = f"ensemble {name!r}, step {step.label}: {error}"
    if isinstance(error, ServingError):
        wrapped = type(error)(message)
        return wrapped
    return InternalError(message)

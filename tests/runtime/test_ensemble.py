"""Ensemble configs: what is refused when read (with the reason), and the order steps run in."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from squishy.runtime.api import InferRequest, InferResponse, UnavailableError
from squishy.runtime.ensemble import EnsembleConfigError, EnsembleStep, ensemble_steps, run_ensemble
from squishy.runtime.repository import parse_config_text

HEAD = """
name: "e"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def steps_of(body: str) -> tuple[EnsembleStep, ...]:
    return ensemble_steps(parse_config_text(HEAD + body, "pbtxt"), "e")


def step(model: str, reads: str, writes: str) -> str:
    maps = f'input_map {{ key: "in" value: "{reads}" }} output_map {{ key: "out" value: "{writes}" }}'
    return f'{{ model_name: "{model}" {maps} }}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "at least one step"),
        ("ensemble_scheduling { step [ " + step("a", "x", "t") + " ] }", "ensemble output 'y' is written by no step"),
        (
            "ensemble_scheduling { step [ " + step("a", "x", "y") + ", " + step("b", "x", "y") + " ] }",
            "written by step a and by step b",
        ),
        ("ensemble_scheduling { step [ " + step("a", "u", "y") + " ] }", "reads 'u', which no step writes"),
        (
            "ensemble_scheduling { step [ " + step("a", "t", "y") + ", " + step("b", "y", "t") + " ] }",
            "wait on each other",
        ),
        ("ensemble_scheduling { step [ " + step("e", "x", "y") + " ] }", "cannot call itself"),
    ],
)
def test_a_config_that_cannot_run_is_refused_with_the_reason(body: str, reason: str) -> None:
    with pytest.raises(EnsembleConfigError, match=reason):
        steps_of(body)


def test_independent_steps_run_together_and_each_gets_what_is_left_of_the_deadline() -> None:
    steps = steps_of(
        "ensemble_scheduling { step [ "
        + ", ".join([step("sum", "a", "y"), step("left", "x", "l"), step("right", "x", "r"), step("join", "l", "a")])
        + " ] }"
    )
    clock = [0.0]
    calls: list[tuple[str, float, int]] = []

    async def infer(s: EnsembleStep, request: InferRequest) -> InferResponse:
        calls.append((s.model, clock[0], request.timeout_us))
        clock[0] += 10.0  # every step takes 10 ms
        return InferResponse(s.model, "1", {"out": request.inputs["in"] + 1})

    request = InferRequest("e", None, {"x": np.zeros((1, 2), np.float32)})
    response = asyncio.run(run_ensemble("e", "1", steps, ["y"], request, 100.0, infer, lambda: clock[0]))
    assert np.allclose(response.outputs["y"], 3.0)  # x + 1 (left), + 1 (join), + 1 (sum)
    assert [c[0] for c in calls] == ["left", "right", "join", "sum"]
    assert [c[2] for c in calls] == [100_000, 100_000, 80_000, 70_000]


def test_no_step_starts_after_the_deadline() -> None:
    steps = steps_of("ensemble_scheduling { step [ " + step("a", "x", "t") + ", " + step("b", "t", "y") + " ] }")
    clock = [0.0]

    async def infer(s: EnsembleStep, request: InferRequest) -> InferResponse:
        clock[0] += 60.0
        return InferResponse(s.model, "1", {"out": request.inputs["in"]})

    request = InferRequest("e", None, {"x": np.zeros((1, 2), np.float32)})
    with pytest.raises(UnavailableError, match="deadline passed before step b"):
        asyncio.run(run_ensemble("e", "1", steps, ["y"], request, 50.0, infer, lambda: clock[0]))

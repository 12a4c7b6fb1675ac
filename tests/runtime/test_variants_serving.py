"""A task served by model variants: the core degrades before it drops, honours the accuracy floor, and
says which variant answered.

The core and its control loop are the real ones, on a hand-driven clock (``tests.engine.virtual``); the
variants' ℓ(b) come from their ``profile.json``, so the outcome of a load is exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from squishy.clock import ManualClock
from squishy.cluster import SlotLayout
from squishy.runtime.api import InferRequest, ModelNotReadyError
from squishy.runtime.core import VARIANT_PARAMETER, ServingConfig, ServingCore
from squishy.runtime.repository import ModelRepository
from tests.engine.virtual import VirtualServer

from .onnx_models import add_profiled_model

# big: 5 ms per request at batch 8 (about 200 req/s on one slot); small: 0.5 ms (2,000 req/s).
VARIANTS = {"big": (0.9, {"1": 10, "8": 40}), "small": (0.7, {"1": 2, "8": 4})}

TASK_CONFIG = """
name: "digit"
platform: "squishy_variants"
max_batch_size: 8
input {{ name: "x" data_type: TYPE_FP32 dims: [4] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [2] }}
parameters {{ key: "slo_ms" value {{ string_value: "200" }} }}
parameters {{ key: "variants" value {{ string_value: "big,small" }} }}
{extra}
"""


def task_repository(tmp_path: Path, floor: float | None = None, small_accuracy: str = "0.7") -> ModelRepository:
    for name, (accuracy, batch_ms) in VARIANTS.items():
        value = small_accuracy if name == "small" else str(accuracy)
        extra = f'parameters {{ key: "accuracy" value {{ string_value: "{value}" }} }}'
        add_profiled_model(tmp_path, name, 200, batch_ms, extra=extra)
    extra = "" if floor is None else f'parameters {{ key: "accuracy_floor" value {{ string_value: "{floor}" }} }}'
    (tmp_path / "digit").mkdir()
    (tmp_path / "digit" / "config.pbtxt").write_text(TASK_CONFIG.format(extra=extra))
    return ModelRepository(tmp_path)


def started(repo: ModelRepository) -> VirtualServer:
    clock = ManualClock()
    config = ServingConfig(layout=SlotLayout(1, 1), executor="null", epoch_s=3600)
    serving = ServingCore(repo, config, clock=clock)
    asyncio.run(serving.start(run_threads=False))
    return VirtualServer(serving, clock)


def request(rid: str) -> InferRequest:
    return InferRequest("digit", None, {"x": np.ones((1, 4), np.float32)}, request_id=rid)


def offer(server: VirtualServer, rate_per_s: float, start_ms: float, seconds: float, prefix: str) -> list[str]:
    ids = []
    for i in range(int(rate_per_s * seconds)):
        rid = f"{prefix}{i}"
        server.submit_at(start_ms + i * 1000.0 / rate_per_s, request(rid))
        ids.append(rid)
    return ids


def variants_that_answered(server: VirtualServer, ids: list[str]) -> Counter[str]:
    return Counter(
        server.outcomes[rid].response.parameters[VARIANT_PARAMETER]
        for rid in ids
        if server.outcomes[rid].response is not None
    )


def test_light_load_is_answered_by_the_most_accurate_variant_and_the_response_says_so(tmp_path: Path):
    server = started(task_repository(tmp_path))
    ids = offer(server, 50, 0.0, 4.0, "r")
    server.run(6000.0)
    assert all(server.outcomes[rid].status == "good" for rid in ids)
    assert variants_that_answered(server, ids) == {"big": len(ids)}
    response = server.outcomes[ids[0]].response
    assert response is not None and response.model_name == "digit"  # the model the client called
    assert server.core.model_ready("digit") and server.core.is_ready()
    assert server.core.statistics("digit")[0].success_count == len(ids)


def test_beyond_the_accurate_variants_capacity_part_of_the_load_degrades_and_nothing_is_dropped(tmp_path: Path):
    server = started(task_repository(tmp_path))
    warm = offer(server, 50, 0.0, 3.0, "w")
    ids = offer(server, 400, 3000.0, 10.0, "r")  # 2x what "big" alone can serve on the one slot
    server.run(16_000.0)
    settled = ids[len(ids) // 2 :]  # after the re-plan that the load change triggers
    assert all(server.outcomes[rid].status == "good" for rid in settled)
    answered = variants_that_answered(server, settled)
    assert answered["small"] > 0 and answered["big"] > 0  # a mix: not everything degraded
    assert all(server.outcomes[rid].status == "good" for rid in warm)
    text = server.core.metrics.exposition().decode()
    assert 'squishy_variant_requests_total{model="digit",variant="small"}' in text
    assert "squishy_planned_delivered_accuracy" in text


def test_below_the_accuracy_floor_the_task_sheds_instead_of_degrading(tmp_path: Path):
    server = started(task_repository(tmp_path, floor=0.8))  # "small" (0.7) may never answer
    ids = offer(server, 400, 0.0, 10.0, "r")
    server.run(12_000.0)
    settled = ids[len(ids) // 2 :]
    statuses = Counter(server.outcomes[rid].status for rid in settled)
    assert set(variants_that_answered(server, ids)) == {"big"}
    assert statuses["good"] > 0 and statuses["dropped"] > 0 and statuses["late"] == 0
    shed = [server.outcomes[rid].error for rid in settled if server.outcomes[rid].status == "dropped"]
    assert any("accuracy_floor 0.8" in message for message in shed)
    text = server.core.metrics.exposition().decode()
    assert 'squishy_door_shed_total{model="digit",reason="capacity",version="1"}' in text


def test_a_task_whose_variant_lacks_a_measured_accuracy_is_not_ready_with_the_reason(tmp_path: Path):
    server = started(task_repository(tmp_path, small_accuracy="high"))
    assert not server.core.model_ready("digit")
    assert server.core.model_ready("big")  # the variants themselves still serve
    with pytest.raises(ModelNotReadyError, match="no parameter accuracy"):
        server.core.submit(request("x"), lambda _: None)


def test_a_burst_beyond_the_costlier_variant_is_answered_by_the_cheaper_one_beside_it(tmp_path: Path):
    server = started(task_repository(tmp_path))
    steady = offer(server, 300, 0.0, 8.0, "s")  # split between "big" and "small" on the one slot
    # 80 requests in 8 ms: "big" alone would finish about 18 of them within the 200 ms SLO (10 ms each,
    # beside "small"'s turns); the rest would be dropped.
    burst = [f"b{i}" for i in range(80)]
    for i, rid in enumerate(burst):
        server.submit_at(8000.0 + i * 0.1, request(rid))
    server.run(10_000.0)
    assert all(server.outcomes[rid].status == "good" for rid in burst)
    assert all(server.outcomes[rid].status == "good" for rid in steady[len(steady) // 2 :])
    assert variants_that_answered(server, burst)["small"] > 0
    text = server.core.metrics.exposition().decode()
    assert 'squishy_variant_fallbacks_total{model="digit",planned="big",variant="small"}' in text


def test_a_burst_on_a_task_served_by_its_accurate_variant_falls_back_to_the_resident_cheapest(tmp_path: Path):
    server = started(task_repository(tmp_path))
    steady = offer(server, 50, 0.0, 4.0, "s")  # light: every request on "big", "small" kept resident
    burst = [f"b{i}" for i in range(60)]  # "big" alone finishes about 19 of these within the SLO
    for i, rid in enumerate(burst):
        server.submit_at(4000.0 + i * 0.1, request(rid))
    server.run(6000.0)
    assert variants_that_answered(server, steady) == {"big": len(steady)}
    assert all(server.outcomes[rid].status == "good" for rid in burst)
    answered = variants_that_answered(server, burst)
    assert answered["big"] > 0 and answered["small"] > 0

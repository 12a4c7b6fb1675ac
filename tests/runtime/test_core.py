"""The serving core in-process: scheduling semantics that users rely on, with the null executor."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from squishy.cluster import SlotLayout
from squishy.runtime.api import InferRequest, InvalidRequestError, ModelNotReadyError, UnavailableError
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import Allocation, Backend, Plan

from .onnx_models import add_model

CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "x" data_type: TYPE_FP32 dims: [4] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [2] }}
parameters {{ key: "slo_ms" value {{ string_value: "{slo}" }} }}
{extra}
"""


def repository(tmp_path: Path, models: dict[str, dict]) -> ModelRepository:
    for name, options in models.items():
        config = CONFIG.format(name=name, slo=options.get("slo", 200), extra=options.get("extra", ""))
        add_model(tmp_path, name, config=config)
        # A user profile: the null executor sleeps these latencies, and nothing is measured.
        profile = {"model": name, "device": "cpu", "batch_ms": options.get("batch_ms", {"1": 10, "8": 24})}
        (tmp_path / name / "profile.json").write_text(json.dumps(profile))
    return ModelRepository(tmp_path)


def request(model: str, rows: int = 1, **kwargs) -> InferRequest:
    return InferRequest(model, None, {"x": np.ones((rows, 4), np.float32)}, arrival_s=time.monotonic(), **kwargs)


def core(repo: ModelRepository, slots: int = 1, **overrides) -> ServingCore:
    config = ServingConfig(layout=SlotLayout(slots, 1), executor="null", epoch_s=3600, **overrides)
    return ServingCore(repo, config)


def test_outputs_come_back_per_request_with_their_rows(tmp_path: Path):
    async def scenario():
        serving = core(repository(tmp_path, {"lin": {}}))
        await serving.start()
        try:
            replies = await asyncio.gather(*(serving.infer(request("lin", rows)) for rows in (1, 3, 2)))
        finally:
            await serving.stop()
        return replies

    replies = asyncio.run(scenario())
    assert [r.outputs["y"].shape for r in replies] == [(1, 2), (3, 2), (2, 2)]


def test_higher_priority_runs_first_when_priority_levels_are_configured(tmp_path: Path):
    extra = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    repo = repository(tmp_path, {"lin": {"extra": extra, "slo": 2000, "batch_ms": {"1": 20}}})

    async def scenario():
        serving = core(repo)
        await serving.start()
        order: list[str] = []

        async def tracked(name: str, priority: int) -> None:
            await serving.infer(request("lin", priority=priority))
            order.append(name)

        try:
            blocker = asyncio.create_task(tracked("first", 0))  # occupies the backend for 20 ms
            await asyncio.sleep(0.005)
            tasks = [asyncio.create_task(tracked(f"low{i}", 2)) for i in range(3)]
            tasks += [asyncio.create_task(tracked(f"high{i}", 1)) for i in range(3)]
            await asyncio.gather(blocker, *tasks)
            with pytest.raises(InvalidRequestError, match="priority 3 exceeds"):
                await serving.infer(request("lin", priority=3))
        finally:
            await serving.stop()
        return order

    order = asyncio.run(scenario())
    assert order[0] == "first"
    assert set(order[1:4]) == {"high0", "high1", "high2"}  # batch of 1 each: highs overtake the lows


def test_a_timeout_shorter_than_the_model_can_run_is_refused_at_once(tmp_path: Path):
    async def scenario():
        serving = core(repository(tmp_path, {"lin": {}}))
        await serving.start()
        try:
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="deadline"):
                await serving.infer(request("lin", timeout_us=2000))  # 2 ms < ℓ(1) = 10 ms
            elapsed_s = time.monotonic() - started
            stats = serving.statistics("lin")[0]
        finally:
            await serving.stop()
        return elapsed_s, stats

    elapsed_s, stats = asyncio.run(scenario())
    assert elapsed_s < 0.01 + 0.5  # answered without waiting for any batch (generous for a loaded machine)
    assert stats.fail_count == 1 and stats.success_count == 0


def test_overload_is_shed_with_explicit_503s_and_nothing_is_lost(tmp_path: Path):
    # One slot, ℓ(b) = 10 + 2b ms, SLO 60 ms: about 400 req/s at most. Offer far more, all at once.
    repo = repository(tmp_path, {"lin": {"slo": 60, "batch_ms": {"1": 12, "8": 26}}})

    async def scenario():
        serving = core(repo)
        await serving.start()
        try:
            results = await asyncio.gather(*(serving.infer(request("lin")) for _ in range(300)), return_exceptions=True)
            stats = serving.statistics("lin")[0]
        finally:
            await serving.stop()
        return results, stats

    results, stats = asyncio.run(scenario())
    served = [r for r in results if not isinstance(r, BaseException)]
    dropped = [r for r in results if isinstance(r, UnavailableError)]
    assert len(served) + len(dropped) == 300  # no other errors, nothing silent
    assert served and dropped
    assert stats.success_count == len(served) and stats.fail_count == len(dropped)
    assert max(b for b in stats.batch_stats) <= 8


def test_a_new_plan_moves_queued_requests_with_their_session_and_loses_none(tmp_path: Path):
    """Two plans that swap sessions between the two slots, installed back and forth while requests queue:
    every request is answered exactly once (a result, or an explicit drop), and queued ones move."""
    repo = repository(tmp_path, {"a": {"slo": 400, "batch_ms": {"1": 5}}, "b": {"slo": 400, "batch_ms": {"1": 5}}})

    def plan(first: str, second: str) -> Plan:
        def backend(backend_id: int, model: str) -> Backend:
            allocation = Allocation(f"{model}:1", 400, 10.0, 1, 5.5, 399.0)
            return Backend(backend_id, 50.0, (allocation,))

        return Plan((backend(0, first), backend(1, second)), lower_bound=0.0)

    async def scenario():
        serving = core(repo, slots=2)
        await serving.start()
        try:
            tasks = []
            for round_ in range(8):
                tasks += [asyncio.create_task(serving.infer(request(m))) for m in ("a", "b") for _ in range(15)]
                await asyncio.sleep(0)  # let them queue
                swapped = plan("a", "b") if round_ % 2 else plan("b", "a")
                serving._load_executors(swapped, {0: 0, 1: 1})
                serving._install(swapped, {0: 0, 1: 1})
                await asyncio.sleep(0.02)
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
            stats = {s.name: s for s in serving.statistics()}
        finally:
            await serving.stop()
        return results, stats, serving.requests_moved

    results, stats, moved = asyncio.run(scenario())
    served = [r for r in results if not isinstance(r, BaseException)]
    dropped = [r for r in results if isinstance(r, UnavailableError)]
    assert len(served) + len(dropped) == len(results) == 240
    assert sum(s.success_count for s in stats.values()) == len(served)
    assert sum(s.fail_count for s in stats.values()) == len(dropped)
    assert moved > 0
    assert len(served) > len(dropped)


def test_unload_and_load_through_the_repository_api(tmp_path: Path):
    async def scenario():
        serving = core(repository(tmp_path, {"a": {}, "b": {}}))
        await serving.start()
        try:
            await serving.unload_model("a")
            assert not serving.model_ready("a") and serving.model_ready("b")
            with pytest.raises(ModelNotReadyError):
                await serving.infer(request("a"))
            assert (await serving.infer(request("b"))).outputs["y"].shape == (1, 2)
            assert serving.is_ready()  # unloaded on purpose: no longer a model asked for (as in Triton)
            await serving.load_model("a")
            assert serving.model_ready("a") and serving.is_ready()
            return (await serving.infer(request("a"))).outputs["y"].shape
        finally:
            await serving.stop()

    assert asyncio.run(scenario()) == (1, 2)


def test_a_model_whose_slo_this_machine_cannot_meet_is_not_ready_with_the_reason(tmp_path: Path):
    repo = repository(tmp_path, {"slow": {"slo": 15, "batch_ms": {"1": 10}}, "ok": {}})

    async def scenario():
        serving = core(repo)
        await serving.start()
        try:
            index = {s.name: s for s in serving.repository_index()}
            ready = serving.model_ready("ok")
        finally:
            await serving.stop()
        return index, ready

    index, ready = asyncio.run(scenario())
    assert ready
    assert index["slow"].state == "UNAVAILABLE"
    assert "SLO 15 ms is below" in index["slow"].reason


def test_an_idle_slot_steals_batches_only_when_its_own_promises_allow(tmp_path: Path):
    """Slot 0 runs "slow" alone (20 ms batches, loose SLO); slot 1 runs "fast" (1 ms, SLO 30 ms, cycle 20 ms:
    10 ms of slack). Under a backlog of "slow", slot 1 may not take a 20 ms batch of it (that would break
    "fast"'s promise); with "fast" gone from the plan, slot 1 has nothing to protect and helps."""
    repo = repository(
        tmp_path,
        {"slow": {"slo": 2000, "batch_ms": {"1": 20}}, "fast": {"slo": 30, "batch_ms": {"1": 1}}},
    )

    def plan(with_fast: bool) -> Plan:
        slow = Backend(0, 20.0, (Allocation("slow:1", 2000, 50.0, 1, 20.0, 1999.0),))
        fast = Backend(1, 20.0, (Allocation("fast:1", 30, 50.0, 1, 1.0, 29.0),))
        return Plan((slow, fast) if with_fast else (slow,), lower_bound=0.0)

    async def burst(serving: ServingCore, with_fast: bool) -> int:
        chosen = plan(with_fast)
        serving._load_executors(chosen, {0: 0, 1: 1})
        serving._install(chosen, {0: 0, 1: 1})
        before = serving._workers[1].batches_stolen
        results = await asyncio.gather(*(serving.infer(request("slow")) for _ in range(12)), return_exceptions=True)
        assert all(not isinstance(r, BaseException) for r in results)
        return serving._workers[1].batches_stolen - before

    async def scenario():
        serving = core(repo, slots=2)
        await serving.start()
        try:
            return await burst(serving, with_fast=True), await burst(serving, with_fast=False)
        finally:
            await serving.stop()

    guarded, free = asyncio.run(scenario())
    assert guarded == 0
    assert free > 0

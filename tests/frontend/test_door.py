"""The front door, under a hand-driven clock: CoDel's standing queue, deadlines, models kept apart,
priorities, and what it exports."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2

from squishy.clock import ManualClock
from squishy.frontend.door import SHED_DEADLINE, SHED_QUEUE, Door, DoorConfig, ShedError
from squishy.metrics import ServerMetrics
from squishy.runtime.api import ModelSpec

TARGET_MS, INTERVAL_MS = 5.0, 100.0


def spec(name: str, slo_ms: float = 50.0, priority_levels: int = 0, reserved: str | None = None) -> ModelSpec:
    config = model_config_pb2.ModelConfig(name=name)
    if priority_levels:
        config.dynamic_batching.priority_levels = priority_levels
    parameters = {"door_reserved_share": reserved} if reserved is not None else {}
    return ModelSpec(name, "1", "onnxruntime_onnx", 8, (), (), slo_ms, config=config, parameters=parameters)


def door(clock: ManualClock, alone_ms: float = 2.0, metrics: ServerMetrics | None = None) -> Door:
    return Door(DoorConfig(target_ms=TARGET_MS, interval_ms=INTERVAL_MS), clock=clock, alone_ms=lambda s: alone_ms,
                metrics=metrics)  # fmt: skip


def arrive(gate: Door, clock: ManualClock, model: ModelSpec, waited_ms: float, **kw: object) -> str | None:
    """One request that reached the machine ``waited_ms`` ago: None if admitted, else the shed reason."""
    try:
        gate.admit(model, clock.now_ms() - waited_ms, **kw)  # type: ignore[arg-type]
    except ShedError as shed:
        assert shed.http_status == 503 and shed.grpc_code == "UNAVAILABLE"
        return shed.reason
    gate.finished(model)
    return None


def build_standing_queue(gate: Door, clock: ManualClock, model: ModelSpec, wait_ms: float = 20.0) -> None:
    """Requests that all waited ``wait_ms`` for a whole interval: a standing queue."""
    for _ in range(11):
        arrive(gate, clock, model, wait_ms)
        clock.advance_ms(INTERVAL_MS / 10)
    assert gate.standing


def test_a_burst_that_drains_is_not_a_standing_queue() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock), spec("a")
    for waited in (30.0, 25.0, 0.5, 30.0) * 5:  # long waits, but some request in each interval got in fast
        assert arrive(gate, clock, model, waited) is None
        clock.advance_ms(10.0)
    assert not gate.standing


def test_a_standing_queue_sheds_what_waited_past_the_target_and_admits_the_rest() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock), spec("a")
    build_standing_queue(gate, clock, model)
    assert arrive(gate, clock, model, TARGET_MS * 2) == SHED_QUEUE
    assert arrive(gate, clock, model, TARGET_MS / 2) is None
    # A whole interval in which nothing had to be shed: the overload is over.
    for _ in range(21):
        arrive(gate, clock, model, 1.0)
        clock.advance_ms(INTERVAL_MS / 10)
    assert not gate.standing and arrive(gate, clock, model, TARGET_MS * 2) is None


def test_a_loop_near_saturation_that_meets_every_slo_is_left_alone() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock), spec("a", slo_ms=50.0)  # budget 48 ms: overload above 12 ms of standing wait
    for _ in range(30):
        assert arrive(gate, clock, model, 10.0) is None
        clock.advance_ms(INTERVAL_MS / 10)
    assert not gate.standing
    tight = spec("tight", slo_ms=20.0)  # a tighter SLO in the mix lowers the bar (budget 18 ms: 5 ms)
    for _ in range(30):
        arrive(gate, clock, tight, 10.0)
        clock.advance_ms(INTERVAL_MS / 10)
    assert gate.standing


def test_a_request_with_no_time_left_for_its_model_is_shed_even_without_a_queue() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock, alone_ms=10.0), spec("a", slo_ms=50.0)
    assert arrive(gate, clock, model, 39.0) is None
    assert arrive(gate, clock, model, 41.0) == SHED_DEADLINE
    assert gate.shed == {SHED_DEADLINE: 1}


def test_loop_lag_counts_as_wait_and_decays() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock, alone_ms=10.0), spec("a", slo_ms=50.0)
    for _ in range(3):  # the loop ran its timers 45 ms late, again and again: sockets are read that late too
        gate.observe_lag(45.0)
    assert gate.wait_ms(clock.now_ms(), clock.now_ms()) == pytest.approx(45.0)
    assert arrive(gate, clock, model, 0.0) == SHED_DEADLINE
    clock.advance_ms(200.0)  # four half-lives
    assert gate.wait_ms(clock.now_ms(), clock.now_ms()) == pytest.approx(45.0 / 16)
    assert arrive(gate, clock, model, 0.0) is None


def test_one_stall_of_the_loop_sheds_nothing() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock, alone_ms=10.0), spec("a", slo_ms=50.0)
    for lag_ms in (0.1, 0.2, 300.0):  # a collection or a slow write held the loop once
        gate.observe_lag(lag_ms)
        clock.advance_ms(5.0)
    assert gate.wait_ms(clock.now_ms(), clock.now_ms()) < 1.0
    assert arrive(gate, clock, model, 0.0) is None
    for _ in range(3):
        gate.observe_lag(300.0)
    assert arrive(gate, clock, model, 0.0) == SHED_DEADLINE


def test_a_flood_on_one_model_is_shed_while_a_light_model_keeps_getting_in() -> None:
    clock = ManualClock(1000.0)
    gate, flood, light = door(clock), spec("flood"), spec("light")
    for tick in range(30):  # 9 flood requests for every light one, all waiting 20 ms
        arrive(gate, clock, light if tick % 10 == 0 else flood, 20.0)
        clock.advance_ms(INTERVAL_MS / 10)
    assert gate.standing
    assert arrive(gate, clock, flood, 20.0) == SHED_QUEUE
    assert arrive(gate, clock, light, 20.0) is None  # under its fair share: only its deadline sheds it
    assert arrive(gate, clock, light, 49.0) == SHED_DEADLINE


def test_a_reserved_share_is_not_shed_for_others() -> None:
    clock = ManualClock(1000.0)
    gate = door(clock)
    flood, reserved = spec("flood"), spec("reserved", reserved="0.3")
    for tick in range(30):  # reserved gets 1 in 5 of the admissions: under its 30%
        arrive(gate, clock, reserved if tick % 5 == 0 else flood, 20.0)
        clock.advance_ms(INTERVAL_MS / 10)
    assert gate.standing
    assert arrive(gate, clock, reserved, 20.0) is None
    assert arrive(gate, clock, flood, 20.0) == SHED_QUEUE


def test_lower_priorities_are_shed_first_and_judged_after_decoding() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock), spec("p", priority_levels=3)
    build_standing_queue(gate, clock, model)
    waited = TARGET_MS * 1.5  # past the target (level 3's limit), within 2 × it (level 2's) and 3 × (level 1's)
    assert arrive(gate, clock, model, waited) is None  # before decoding: the priority is not known yet
    assert arrive(gate, clock, model, waited, parsed=True, priority=1) is None  # may wait 3 × the target
    assert arrive(gate, clock, model, waited, parsed=True, priority=2) is None
    assert arrive(gate, clock, model, waited, parsed=True, priority=3) == SHED_QUEUE
    assert arrive(gate, clock, model, waited, parsed=True) == SHED_QUEUE  # the default level is the lowest


def test_shed_counts_pending_requests_and_lag_are_exported() -> None:
    clock = ManualClock(1000.0)
    metrics = ServerMetrics()
    gate, model = door(clock, alone_ms=10.0, metrics=metrics), spec("a", slo_ms=50.0)
    gate.admit(model, clock.now_ms())
    gate.admit(model, clock.now_ms())
    arrive(gate, clock, model, 45.0)
    gate.observe_lag(3.0)
    text = metrics.exposition().decode()
    assert 'nv_inference_pending_request_count{model="a",version="1"} 2.0' in text
    assert 'squishy_door_shed_total{model="a",reason="deadline",version="1"} 1.0' in text
    assert 'nv_inference_request_failure{model="a",reason="REJECTED",version="1"} 1' in text
    assert "squishy_event_loop_lag_ms_count 1.0" in text
    gate.finished(model)
    gate.finished(model)
    assert 'nv_inference_pending_request_count{model="a",version="1"} 0.0' in metrics.exposition().decode()


def test_a_door_switched_off_admits_everything() -> None:
    clock = ManualClock(1000.0)
    gate = Door(DoorConfig(enabled=False), clock=clock)
    assert arrive(gate, clock, spec("a"), 10_000.0) is None


def test_an_interval_of_silence_ends_the_overload() -> None:
    clock = ManualClock(1000.0)
    gate, model = door(clock), spec("a")
    build_standing_queue(gate, clock, model)
    assert arrive(gate, clock, model, TARGET_MS * 2) == SHED_QUEUE
    clock.advance_ms(INTERVAL_MS * 1.5)  # nobody came: whatever queue there was has drained
    assert arrive(gate, clock, model, TARGET_MS * 2) is None
    assert not gate.standing

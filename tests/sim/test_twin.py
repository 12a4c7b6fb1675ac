"""The twin: the simulator set up as ``squishy serve`` on a machine, from its profiles and calibration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from squishy.bench.calibrate import Calibration, ModelCosts, busy_rates
from squishy.cluster import SlotLayout
from squishy.sim.twin import Twin, physical_limit
from tests.runtime.onnx_models import add_profiled_model

MODELS = {"big": (200, {"1": 9.0, "2": 17.0, "4": 33.0, "8": 65.0}), "small": (20, {"1": 0.3, "8": 0.6})}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for name, (slo, table) in MODELS.items():
        add_profiled_model(root, name, slo, table)
    return root


def calibration(scale: float, execution_factor: float = 1.0) -> Calibration:
    costs = ModelCosts(
        rates_per_s=[100.0, 1000.0],
        frontend_ms=[0.4 * scale, 0.2 * scale],
        reply_ms=[0.3 * scale, 0.15 * scale],
        generator_ms=[0.3 * scale, 0.15 * scale],
        slot_batch_ms=0.3 * scale,
        slot_request_ms=0.05 * scale,
        execution_factor=execution_factor,
    )
    return Calibration(2, {"big": costs, "small": costs}, "by hand")


def twin(repository: Path, calibrated: Calibration | None) -> Twin:
    return Twin(repository, calibrated, {"big": 0.5, "small": 0.5}, SlotLayout(2, 1), warmup_s=1.0, duration_s=8.0)


def test_costs_are_interpolated_between_calibration_rates_and_flat_beyond():
    costs = calibration(1.0).models["big"]
    assert costs.at(100.0)["frontend_ms"] == pytest.approx(0.4)
    assert costs.at(316.2277660168379)["frontend_ms"] == pytest.approx(0.3)  # halfway in log(rate)
    assert costs.at(10.0)["frontend_ms"] == pytest.approx(0.4) and costs.at(1e5)["frontend_ms"] == pytest.approx(0.2)
    assert costs.at(500.0)["generator_send_ms"] + costs.at(500.0)["generator_receive_ms"] == pytest.approx(
        costs.at(500.0)["frontend_ms"] * 0.75
    )


def test_a_light_load_meets_every_slo_and_the_prediction_is_deterministic(repository: Path):
    model = twin(repository, calibration(1.0))
    first, again = model.predict(60.0, seed=3), model.predict(60.0, seed=3)
    assert first.passed and first.per_model == again.per_model
    assert first.per_model["big"]["p50_ms"] >= 9.0  # at least the model's own ℓ(1)


def test_the_host_cpu_the_server_spends_costs_capacity_and_more_of_it_costs_more(repository: Path):
    ideal = twin(repository, None).search(start_per_s=300.0).rate
    cheap = twin(repository, calibration(1.0)).search(start_per_s=300.0).rate
    costly = twin(repository, calibration(3.0)).search(start_per_s=300.0).rate
    limit = physical_limit(twin(repository, None))
    assert 0 < costly < cheap < ideal <= limit


def test_batches_slowed_by_the_frontend_beside_them_take_longer_and_cost_capacity(repository: Path):
    calibrated, slowed = twin(repository, calibration(1.0)), twin(repository, calibration(1.0, 1.5))
    light, light_slowed = calibrated.predict(60.0, seed=3), slowed.predict(60.0, seed=3)
    # ℓ(1) of "big" is 9 ms: 1.5× of it is on the path of every request at light load.
    assert light_slowed.per_model["big"]["p50_ms"] >= light.per_model["big"]["p50_ms"] + 4.0
    assert slowed.search(start_per_s=300.0).rate < calibrated.search(start_per_s=300.0).rate


def test_an_old_calibration_file_reads_as_batches_at_their_profiled_speed():
    data = calibration(1.0).to_dict()
    for costs in data["models"].values():
        del costs["execution_factor"], costs["idle_runs"]
    assert Calibration.from_dict(data).models["big"].at(100.0)["execution_factor"] == 1.0


def test_the_busy_pass_keeps_the_slots_well_under_their_limit():
    # A costly model (limit 224 req/s): 20% and 40% of it, no calibration rate above that.
    assert busy_rates(224.0) == [44.8, 89.6]
    # A cheap one: the calibration rates, up to the event loop's, as its limit is far above them.
    assert busy_rates(20_000.0) == [100.0, 300.0, 1000.0, 2000.0]
    assert busy_rates(1_500.0) == [100.0, 300.0, 600.0]
    assert all(rate <= 0.4 * limit for limit in (224.0, 1_500.0, 20_000.0) for rate in busy_rates(limit))
    assert replace(calibration(1.0).models["big"], execution_factor=2.0).at(1e4)["execution_factor"] == 2.0


def test_the_paths_latency_beyond_its_cpu_is_measured_at_the_lowest_rate_and_added_to_every_request(
    repository: Path,
):
    from squishy.bench.calibrate import wire_latency_ms

    costs = calibration(1.0).models["big"]
    runs = [
        {"rate_per_s": 100.0, "latency_p50_ms": 2.5, "send_lag_p50_ms": 0.7},
        {"rate_per_s": 1000.0, "latency_p50_ms": 4.0, "send_lag_p50_ms": 0.9},  # queueing: not the path
    ]
    measured = replace(costs, runs=runs)
    charged = 0.4 + 0.3 + 0.3 + 0.3 + 0.05  # at 100 req/s: event loop both ways, generator, slot thread
    assert wire_latency_ms({"big": measured}) == pytest.approx(2.5 - charged)
    assert wire_latency_ms({"big": costs}) == 0.0  # runs without latencies: nothing known
    base = calibration(1.0)
    with_wire = replace(base, wire_ms=1.5)
    light, wired = twin(repository, base).predict(60.0, seed=3), twin(repository, with_wire).predict(60.0, seed=3)
    for model in MODELS:
        assert wired.per_model[model]["p50_ms"] == pytest.approx(light.per_model[model]["p50_ms"] + 1.5, abs=0.3)
    # Calibration files from before it existed read as no such latency.
    data = base.to_dict()
    del data["wire_ms"]
    assert Calibration.from_dict(data).wire_ms == 0.0


def test_the_twin_forms_the_servers_prefix_groups_and_runs_them(tmp_path: Path):
    from tests.runtime.test_prefix import branchy_model, write

    write(tmp_path, "head-a", branchy_model(2, 1), 2)
    write(tmp_path, "head-b", branchy_model(3, 2), 3)
    model = Twin(tmp_path, None, {"head-a": 0.5, "head-b": 0.5}, SlotLayout(2, 1), warmup_s=1.0, duration_s=6.0)
    [group] = model.prefix_groups
    assert group.prefix.endswith(":prefix") and sorted(group.models) == ["head-a:1", "head-b:1"]
    assert set(model.trunk_profiles) == {group.prefix}
    run = model.predict(100.0, seed=3)
    assert run.passed and all(m["sent"] > 0 for m in run.per_model.values())

"""The twin: the simulator set up as ``squishy serve`` on a machine, from its profiles and calibration."""

from __future__ import annotations

from pathlib import Path

import pytest

from squishy.bench.calibrate import Calibration, ModelCosts
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


def calibration(scale: float) -> Calibration:
    costs = ModelCosts(
        rates_per_s=[100.0, 1000.0],
        frontend_ms=[0.4 * scale, 0.2 * scale],
        reply_ms=[0.3 * scale, 0.15 * scale],
        generator_ms=[0.3 * scale, 0.15 * scale],
        slot_batch_ms=0.3 * scale,
        slot_request_ms=0.05 * scale,
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

"""Tiny versions of every shipped study, through the CLI: JSON and PNG written, same seed same JSON."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from squishy.cli import main
from squishy.sim.scenario import load_scenario, shipped_scenarios
from squishy.sim.simulation import Simulation
from squishy.sim.studies import StudyOptions, run_study, sim_config
from squishy.sim.systems import SYSTEMS, plan_for, planning_profiles

STUDIES = ["drop-policy", "game", "traffic", "traffic-offpeak", "optimality", "large", "bursty"]


def test_every_study_ships():
    assert set(STUDIES) <= set(shipped_scenarios())
    for name in STUDIES:
        assert load_scenario(name).study in {"drop-policy", "throughput", "optimality", "large", "bursty"}


@pytest.mark.parametrize("name", ["drop-policy", "traffic", "large"])
def test_cli_writes_results_and_plots(tmp_path, name, capsys):
    out = tmp_path / name
    assert main(["simulate", name, "--out", str(out), "--quick", "--workers", "1", "--seed", "3"]) == 0
    results = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.png").stat().st_size > 1000
    assert "wall clock" in capsys.readouterr().out
    text = json.dumps(results)
    assert "wall" not in text and "elapsed" not in text  # timings go to stdout only


def test_same_seed_same_json_twice():
    scenario = load_scenario("traffic")
    options = StudyOptions(seed=5, quick=True, workers=1)
    first = json.dumps(run_study(scenario, options))
    assert first == json.dumps(run_study(scenario, options))


def test_quick_drop_policy_early_beats_lazy_under_poisson():
    results = run_study(load_scenario("drop-policy"), StudyOptions(quick=True, workers=1))
    for alpha in {r["alpha_ms"] for r in results["runs"]}:
        rows = {
            r["drop"]: r["bad_rate"] for r in results["runs"] if r["alpha_ms"] == alpha and r["arrivals"] == "poisson"
        }
        assert rows["early"] <= rows["lazy"]


def test_a_scenario_file_without_a_study_runs_once(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "profiles: [{model: m, device: sim, alpha_ms: 1.0, beta_ms: 5.0, max_batch: 32}]\n"
        "sessions: [{model: m, slo_ms: 100, rate: 300}]\n"
        "simulation: {duration_s: 5, warmup_s: 1, arrivals: 'gamma:2', system: squishy}\n"
    )
    results = run_study(load_scenario(str(path)), StudyOptions(workers=1))
    assert results["study"] == "run" and results["overall"]["sent"] > 1000


def test_quick_large_keeps_to_its_cluster_and_splits_the_bad_rate_by_capacity():
    scenario = load_scenario("large")
    small = replace(scenario, simulation={**scenario.simulation, "cluster_backends": 30})
    results = run_study(small, StudyOptions(quick=True, workers=1))
    assert results["cluster_backends"] == 30
    assert 0 < results["backends_max"] <= 30  # the trough already needs more: the plan admits what fits
    assert results["segments"][0]["over_capacity"] and results["segments"][0]["min_plan_headroom"] < 1.0
    over = results["by_capacity"]["over_capacity"]
    assert over["sent"] > 0 and over["bad"] > 0  # early drop sheds what the plan did not admit
    assert set(results["apps"]) == {"nlp", "speech", "game", "video"}
    assert sum(app["sent"] for app in results["apps"].values()) == results["overall"]["sent"]
    assert "wall" not in json.dumps(results)


def test_every_system_pays_pre_processing_per_frame_as_the_scenario_declares():
    scenario = load_scenario("game")
    config = sim_config(scenario, StudyOptions())
    lenet = scenario.profiles["lenet_01"]
    assert config.host is not None and config.host.cores == 8
    assert lenet.requests_per_frame == 3 and lenet.processing_share_ms == pytest.approx(10 / 3)
    plan = plan_for(SYSTEMS["squishy"], scenario.workload, scenario.profiles, 16, config.host)
    # Overlapping systems: the frame's whole 10 ms is on the request's path (its latency), and the host
    # cores pay the frontend's 0.3 ms plus a third of the frame's pre-processing per request.
    squishy = Simulation(scenario.workload, scenario.profiles, plan, "squishy", config)
    assert squishy.classes[0].pre_ms == 10.0
    assert squishy.classes[0].host_work_ms == pytest.approx(0.3 + 10 / 3)
    # The others run each request's third on the device's thread, and plan with it.
    for system in ("clipper", "tf-serving", "no-overlap"):
        other = Simulation(scenario.workload, scenario.profiles, plan, system, config)
        assert other.classes[0].host_work_ms == pytest.approx(0.3)
        device = planning_profiles(SYSTEMS[system], scenario.profiles)["lenet_01"]
        assert device.batch_latency_ms(4) == pytest.approx(lenet.batch_latency_ms(4) + 4 * 10 / 3)
    assert load_scenario("drop-policy").simulation.get("host") is None

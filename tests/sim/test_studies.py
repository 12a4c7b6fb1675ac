"""Tiny versions of every shipped study, through the CLI: JSON and PNG written, same seed same JSON."""

from __future__ import annotations

import json

import pytest

from squishy.cli import main
from squishy.sim.scenario import load_scenario, shipped_scenarios
from squishy.sim.studies import StudyOptions, run_study

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

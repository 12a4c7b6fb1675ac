"""The Nexus paper's worked example, through the command users type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "paper_table2.yaml"


def plan_json(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "squishy.cli", "plan", str(EXAMPLE), "--json", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def summary(plan: dict) -> list[tuple]:
    """Each backend as (duty cycle, ((model, batch, rate), ...)), sorted: the plan without its ids."""
    rows = []
    for backend in plan["backends"]:
        sessions = tuple(sorted((s["model"], s["batch"], round(s["rate"], 6)) for s in backend["sessions"]))
        rows.append((round(backend["duty_cycle_ms"], 6), sessions))
    return sorted(rows)


def test_paper_worked_example():
    plan = plan_json()
    assert plan["num_backends"] == 6
    assert plan["lower_bound"] == pytest.approx(4.9)
    assert summary(plan) == sorted(
        [
            (100.0, (("A", 16, 160.0),)),
            (100.0, (("A", 16, 160.0),)),
            (125.0, (("B", 16, 128.0),)),
            (125.0, (("C", 16, 128.0),)),
            # A at batch 8 and B at batch 4 share a 125 ms duty cycle with zero slack; C runs alone.
            (125.0, (("A", 8, 64.0), ("B", 4, 32.0))),
            (125.0, (("C", 4, 32.0),)),
        ]
    )
    shared = next(b for b in plan["backends"] if len(b["sessions"]) == 2)
    assert shared["occupancy"] == pytest.approx(1.0)


def test_plan_table_is_readable():
    out = subprocess.run(
        [sys.executable, "-m", "squishy.cli", "plan", str(EXAMPLE)], capture_output=True, text=True, check=True
    ).stdout
    assert "6 backends (squishy); lower bound 4.90" in out
    assert "duty cycle" in out.splitlines()[0]


def test_batch_oblivious_policy_ignores_duty_cycles():
    plan = plan_json("--policy", "batch-oblivious")
    assert plan["policy"] == "batch-oblivious"
    assert all(b["duty_cycle_ms"] is None for b in plan["backends"])
    rates: dict[str, float] = {}
    for backend in plan["backends"]:
        for s in backend["sessions"]:
            rates[s["model"]] = rates.get(s["model"], 0.0) + s["rate"]
    assert rates == pytest.approx({"A": 384.0, "B": 160.0, "C": 160.0})

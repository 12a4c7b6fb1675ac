"""Bad workload files give one clear error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROFILES = """profiles:
  - {model: A, batch_ms: {"4": 50, "8": 75, "16": 100}}
"""

CASES = {
    "unknown model": (PROFILES + "sessions: [{model: Z, slo_ms: 200, rate: 10}]", "unknown model 'Z'"),
    "missing profile file": ("profiles: [nowhere.json]\nsessions: [{model: A, slo_ms: 200, rate: 1}]", "no such file"),
    "slo too tight": (PROFILES + "sessions: [{model: A, slo_ms: 99, rate: 10}]", "no plan can meet it"),
    "negative rate": (PROFILES + "sessions: [{model: A, slo_ms: 200, rate: -5}]", "rate must be >= 0"),
    "malformed yaml": (PROFILES + "sessions: [{model: A, slo_ms: 200, rate: 10}", "invalid YAML"),
    "not a mapping": ("- just\n- a list\n", "must be a mapping"),
    "missing key": (PROFILES + "sessions: [{model: A, rate: 10}]", "missing 'slo_ms'"),
    "bad settings": (
        PROFILES + "settings: {network_ms: -1}\nsessions: [{model: A, slo_ms: 200, rate: 1}]",
        "network_ms",
    ),
    "margins eat the slo": (
        PROFILES + "settings: {network_ms: 10}\nsessions: [{model: A, slo_ms: 105, rate: 1}]",
        "after 10 ms of margins",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_workload_gives_one_clear_line(tmp_path: Path, name: str):
    text, expected = CASES[name]
    path = tmp_path / "workload.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "squishy.cli", "plan", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0] or name == "missing profile file"


def test_missing_workload_file(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "squishy.cli", "plan", str(tmp_path / "none.yaml")], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stderr.strip().endswith("no such file")

"""Scenario files: a workload file (profiles, settings, sessions, prefix groups, queries) plus a
``simulation:`` section that says which study to run and how. Shipped scenarios live in
``squishy/data/scenarios/NAME.yaml``; any other path works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from squishy.errors import WorkloadError
from squishy.profiles import Profile
from squishy.scheduler import Workload
from squishy.workload_file import load_workload


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    workload: Workload
    profiles: dict[str, Profile]
    simulation: Mapping[str, Any]

    @property
    def study(self) -> str:
        return str(self.simulation.get("study", "run"))


def shipped_scenarios() -> list[str]:
    root = resources.files("squishy.data").joinpath("scenarios")
    return sorted(f.name[: -len(".yaml")] for f in root.iterdir() if f.name.endswith(".yaml"))


def scenario_path(name_or_path: str) -> Path:
    if name_or_path in shipped_scenarios():
        return Path(str(resources.files("squishy.data").joinpath("scenarios").joinpath(f"{name_or_path}.yaml")))
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(shipped_scenarios())
        raise WorkloadError(f"no scenario {name_or_path!r}: not a shipped study ({known}) and no such file")
    return path


def load_scenario(name_or_path: str) -> Scenario:
    path = scenario_path(name_or_path)
    loaded = load_workload(path)
    simulation = loaded.raw.get("simulation") or {}
    if not isinstance(simulation, Mapping):
        raise WorkloadError(f"{path}: 'simulation' must be a mapping")
    name = str(loaded.raw.get("name") or path.stem)
    return Scenario(
        name=name, path=path, workload=loaded.workload, profiles=loaded.profiles, simulation=dict(simulation)
    )

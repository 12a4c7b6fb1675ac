"""Reading and writing profile files (JSON or YAML), and the reference profiles shipped with squishy."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from squishy.errors import ProfileError
from squishy.profiles.profile import Profile


def read_structured(path: Path) -> Any:
    """Parse a JSON or YAML file; errors name the file and the problem in one line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(f"{path}: invalid YAML{where}: {problem}") from None


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    data = read_structured(path)
    try:
        return Profile.from_dict(data, source_hint=str(path))
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def save_profile(profile: Profile, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")


def _reference_files(kind: str) -> Iterable[Any]:
    root = resources.files("squishy.data").joinpath("profiles").joinpath(kind)
    return sorted((f for f in root.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)


def reference_profiles(kind: str = "gpu") -> list[Profile]:
    """Profiles shipped in the package: ``gpu`` (published tables) or ``cpu`` (measured on a 2-core slot)."""
    out = []
    for entry in _reference_files(kind):
        out.append(Profile.from_dict(json.loads(entry.read_text()), source_hint=f"squishy/data/profiles/{kind}"))
    return out


def reference_profile(model: str, device: str, precision: str | None = None, kind: str = "gpu") -> Profile:
    """One shipped profile by model and device (and precision, when several exist)."""
    matches = [
        p
        for p in reference_profiles(kind)
        if p.model == model and p.device == device and (precision is None or p.precision == precision)
    ]
    if not matches:
        raise ProfileError(f"no reference profile for model {model!r} on device {device!r}")
    if len(matches) > 1:
        options = ", ".join(sorted(p.precision for p in matches))
        raise ProfileError(f"several reference profiles for {model!r} on {device!r}; pick a precision: {options}")
    return matches[0]

"""Read a workload file (YAML or JSON) and the profiles it names, for ``squishy plan`` and ``simulate``.

``profiles`` entries may be:
- a path (relative to the workload file) to a profile file, or to a directory of them;
- an inline profile (a mapping with ``model`` and ``batch_ms`` or the linear form);
- ``{reference: MODEL, device: DEVICE, precision?: P, kind?: gpu|cpu}``: a profile shipped with squishy.
When several profiles exist for one model, ``device.name`` picks the device kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squishy.errors import ProfileError, WorkloadError
from squishy.profiles import Profile, load_profile, read_structured, reference_profile
from squishy.scheduler import Workload


@dataclass(frozen=True)
class LoadedWorkload:
    path: Path
    workload: Workload
    profiles: dict[str, Profile]  # model → the profile the scheduler uses
    raw: Mapping[str, Any]  # the parsed file, for keys other tools add (e.g. a simulator section)


def load_workload(path: str | Path) -> LoadedWorkload:
    path = Path(path)
    try:
        raw = read_structured(path)
    except ProfileError as exc:
        raise WorkloadError(str(exc)) from None
    if not isinstance(raw, Mapping):
        raise WorkloadError(f"{path}: a workload must be a mapping with 'profiles' and 'sessions'")
    try:
        workload = Workload.from_dict(raw)
        candidates = _load_profiles(raw.get("profiles"), path.parent)
        profiles = _select(candidates, workload)
    except (WorkloadError, ProfileError) as exc:
        raise WorkloadError(f"{path}: {exc}") from None
    return LoadedWorkload(path=path, workload=workload, profiles=profiles, raw=raw)


def _load_profiles(entries: Any, base: Path) -> list[Profile]:
    if entries is None:
        raise WorkloadError("the workload lists no 'profiles'")
    if not isinstance(entries, list):
        raise WorkloadError("'profiles' must be a list of files, inline profiles or {reference: ...} entries")
    out: list[Profile] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            target = (base / entry).resolve()
            if target.is_dir():
                files = sorted(p for p in target.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
                out.extend(load_profile(p) for p in files)
            else:
                out.append(load_profile(target))
        elif isinstance(entry, Mapping) and "reference" in entry:
            out.append(
                reference_profile(
                    str(entry["reference"]),
                    str(entry.get("device", "")),
                    entry.get("precision"),
                    kind=str(entry.get("kind", "gpu")),
                )
            )
        elif isinstance(entry, Mapping):
            try:
                out.append(Profile.from_dict(entry, source_hint="inline"))
            except ProfileError as exc:
                raise ProfileError(f"profiles[{index}]: {exc}") from None
        else:
            raise WorkloadError(f"profiles[{index}] must be a path, an inline profile or a reference")
    return out


def _select(candidates: list[Profile], workload: Workload) -> dict[str, Profile]:
    device = workload.device.name
    by_model: dict[str, list[Profile]] = {}
    for profile in candidates:
        if device is None or profile.device == device:
            by_model.setdefault(profile.model, []).append(profile)
    selected: dict[str, Profile] = {}
    for model in sorted(workload.models):
        options = by_model.get(model, [])
        if not options:
            on = f" on device {device!r}" if device else ""
            known = ", ".join(sorted(by_model)) or "none"
            raise WorkloadError(f"unknown model {model!r}: no profile for it{on} (profiles loaded for: {known})")
        if len(options) > 1:
            kinds = ", ".join(sorted(f"{p.device}/{p.precision}" for p in options))
            raise WorkloadError(f"model {model!r} has several profiles ({kinds}); set device.name or list one")
        selected[model] = options[0]
    return selected

"""The call tree of a composite model (an ensemble, an application), as query analysis sees it.

Stage 0 is the composite itself; every other stage is one model it calls, under the stage whose output
feeds it. A stage's fan-out γ is its calls per call of its parent: 1 for an ensemble's steps, measured
for an application's. ``squishy.scheduler.queries.split_tree`` splits the composite's SLO over the tree,
and each stage's calls then go to a session of their own, with the stage's budget as its SLO (a model
called by two composites, or by a composite and by clients directly, is two sessions, as in Nexus).
"""

from __future__ import annotations

from dataclasses import dataclass

from squishy.runtime.application import Application
from squishy.runtime.ensemble import Ensemble, EnsembleStep, ensemble_waves


@dataclass(frozen=True)
class CallStage:
    name: str  # unique in its tree: the model's name, then "model#2" for its second appearance
    model: str
    version: str  # "": the newest ready version
    parent: int  # the stage whose output feeds it (0: the composite itself; -1 for the composite)
    gamma: float = 1.0


def ensemble_tree(ensemble: Ensemble) -> tuple[list[CallStage], dict[int, int]]:
    """The ensemble's stages in preorder, and each step's stage index (by ``id`` of the step). A step's
    parent is the latest step that wrote one of the tensors it reads (the composite when none did)."""
    steps = ensemble.steps
    writer: dict[str, EnsembleStep] = {}
    for step in steps:
        for tensor in step.outputs.values():
            writer[tensor] = step
    wave_of = {id(step): index for index, wave in enumerate(ensemble_waves(ensemble)) for step in wave}
    parent_step: dict[int, EnsembleStep | None] = {}
    for step in steps:
        feeders = [writer[t] for t in step.inputs.values() if t in writer]
        parent_step[id(step)] = max(feeders, key=lambda s: wave_of[id(s)], default=None)
    children: dict[int | None, list[EnsembleStep]] = {}
    for step in steps:
        parent = parent_step[id(step)]
        children.setdefault(id(parent) if parent is not None else None, []).append(step)
    stages = [CallStage(ensemble.spec.name, "", "", -1)]
    index_of: dict[int, int] = {}
    seen: dict[str, int] = {}

    def visit(step: EnsembleStep, parent: int) -> None:
        seen[step.model] = seen.get(step.model, 0) + 1
        name = step.model if seen[step.model] == 1 else f"{step.model}#{seen[step.model]}"
        index_of[id(step)] = len(stages)
        stages.append(CallStage(name, step.model, step.version, parent))
        for child in children.get(id(step), []):
            visit(child, index_of[id(step)])

    for root in children.get(None, []):
        visit(root, 0)
    return stages, index_of


def application_tree(application: Application) -> list[CallStage]:
    """The application's declared call tree (``CALLS``) in preorder, with the fan-out measured so far."""
    gamma = application.fan_out()
    stages = [CallStage(application.spec.name, "", "", -1)]
    index_of = {application.spec.name: 0}
    for parent, child in application.edges:
        if child in index_of:  # a model called from two places: one stage, under its first caller
            continue
        index_of[child] = len(stages)
        stages.append(CallStage(child, child, "", index_of[parent], gamma.get((parent, child), 0.0)))
    return stages


def below_ms(stages: list[CallStage], budgets: dict[str, float]) -> list[float]:
    """Per stage, the most time the stages under it may still take (the longest path of budgets below):
    what its calls must leave of the composite's deadline."""
    below = [0.0] * len(stages)
    for index in reversed(range(len(stages))):
        parent = stages[index].parent
        if parent >= 0:
            below[parent] = max(below[parent], budgets.get(stages[index].name, 0.0) + below[index])
    return below

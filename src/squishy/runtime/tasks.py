"""Tasks served by model variants: which variant answers a task's requests, and how many are admitted.

A task (platform ``squishy_variants``) is a model name clients call whose requests any of its variant
models may answer. The control loop's chooser (``squishy.control.variants``) picks, at each re-plan, the
variant per task that maximises the delivered accuracy within the machine's slots, and the share of each
task's requests served when even the cheapest allowed variant does not fit. The serving core routes a
task's requests to the chosen variant's session (``squishy.routing.TaskRoute``) and rejects the rest at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from squishy.routing import TaskRoute
from squishy.runtime.api import ModelSpec
from squishy.runtime.repository import PARAM_ACCURACY, PARAM_ACCURACY_FLOOR, parse_accuracy, variant_names
from squishy.scheduler.variants import Task, Variant


@dataclass(kw_only=True)
class ServedTask(TaskRoute):
    """A task model of the repository and its routing state (which changes only under the core's lock, at
    a plan switch)."""

    spec: ModelSpec
    variants: tuple[str, ...]  # variant model names, as the config lists them
    floor: float  # no variant below this accuracy answers (shed instead)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ServedTask:
        floor = parse_accuracy(spec.parameters.get(PARAM_ACCURACY_FLOOR, "0")) or 0.0
        return cls(spec=spec, variants=variant_names(spec), floor=floor)


@dataclass(frozen=True)
class VariantSession:
    """A variant model's session, as a task sees it: the name the plan knows it by, and its spec."""

    session_id: str
    spec: ModelSpec


def variant_accuracy(spec: ModelSpec) -> float | None:
    return parse_accuracy(spec.parameters.get(PARAM_ACCURACY, ""))


def task_problem(task: ServedTask, sessions: Mapping[str, VariantSession]) -> str | None:
    """Why ``task`` cannot be served now (None: it can). ``sessions`` maps a model name to its session."""
    allowed = 0
    for name in task.variants:
        session = sessions.get(name)
        if session is None:
            return f"variant {name!r} is not loaded (or cannot be scheduled)"
        spec = session.spec
        accuracy = variant_accuracy(spec)
        if accuracy is None:
            return f"variant {name!r} has no parameter {PARAM_ACCURACY} (its measured accuracy, within [0, 1])"
        if spec.inputs != task.spec.inputs or spec.outputs != task.spec.outputs:
            return f"variant {name!r} has other inputs or outputs than the task declares"
        if spec.max_batch_size < task.spec.max_batch_size:
            return f"variant {name!r} batches at most {spec.max_batch_size}, the task {task.spec.max_batch_size}"
        if spec.slo_ms != task.spec.slo_ms:
            return f"variant {name!r} has SLO {spec.slo_ms:g} ms, the task {task.spec.slo_ms:g} ms (set them equal)"
        allowed += accuracy >= task.floor
    if not allowed:
        return f"no variant reaches its accuracy_floor {task.floor:g}"
    return None


def scheduler_task(task: ServedTask, sessions: Mapping[str, VariantSession]) -> Task:
    """The chooser's view of a valid task (``task_problem`` found none): each variant named by its session."""
    variants = []
    for name in task.variants:
        session = sessions[name]
        accuracy = variant_accuracy(session.spec)
        assert accuracy is not None  # task_problem ruled it out
        variants.append(Variant(session.session_id, accuracy))
    return Task(task.spec.name, task.spec.slo_ms, 0.0, tuple(variants), task.floor)

"""Backends on a Ray cluster: each execution slot of the plan is one Ray actor.

``squishy serve --ray ADDRESS`` keeps everything between "rates measured" and "batch dispatched" in the
serving process: the control loop, the router, each slot's backend turn (its queues, duty cycle, early
drop, work stealing). What moves is only the executor: a slot's worker thread sends its batch's
concatenated inputs to the slot's actor and waits for the outputs (numpy arrays travel through Ray's
object store when they are large). Ray places the actors (``SPREAD`` across nodes, each reserving its
threads as ``num_cpus``), runs their processes and tells when one dies; Ray's HTTP proxy and Ray Serve
are not on the path.

Each actor loads its models from ``ModelSpec.model_path``: the repository must be at the same path on
every node (a shared volume), as it is on one machine.

The actors are named (``squishy-slot-N`` in the serving namespace) and detached: when the serving process
crashes they keep running, with their models loaded, and the next serving process on the same namespace
takes them over instead of starting new ones. A clean stop ends them.

This is the only module of squishy that imports Ray; everything else runs without it installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import ray.exceptions

from squishy.cluster.local import SlotLayout
from squishy.errors import SquishyError
from squishy.profiles import Profile
from squishy.runtime.api import ModelSpec
from squishy.runtime.executors import Executor, ExecutorError, SlotLostError, make_executor

logger = logging.getLogger(__name__)


ACTOR_PREFIX = "squishy-slot-"  # slot N's actor is named ACTOR_PREFIX + N in the serving namespace


class RayClusterError(SquishyError):
    """The Ray cluster cannot be reached or cannot host a slot; the message says why."""


@dataclass(frozen=True)
class SlotPlacement:
    """Where one slot's actor runs, and what it holds."""

    slot: int
    node_id: str
    node_ip: str
    pid: int
    threads: int
    loaded: int  # executors it holds: above 0 when it outlived a serving process that crashed


class SlotActor:
    """The process behind one slot: its models' executors, each run by one call at a time (Ray runs an
    actor's calls one after another, as one worker thread drives a local slot)."""

    def __init__(self, slot: int, threads: int) -> None:
        self.slot = slot
        self.threads = threads
        self._executors: dict[str, tuple[tuple[Any, ...], Executor]] = {}

    def placement(self) -> SlotPlacement:
        context = ray.get_runtime_context()
        node_ip = ray.util.get_node_ip_address()
        return SlotPlacement(self.slot, context.get_node_id(), node_ip, os.getpid(), self.threads, len(self._executors))

    def load(self, key: str, spec: ModelSpec, kind: str, threads: int, profile: Profile | None) -> bool:
        """Make ``key``'s executor; one already made alike (by a serving process before a restart) is
        kept, so a restart does not load the model again. Returns whether it was made now."""
        identity = (spec.model_path, spec.version, kind, threads, profile)
        held = self._executors.get(key)
        if held is not None and held[0] == identity:
            return False
        if held is not None:
            held[1].close()
        self._executors[key] = (identity, make_executor(spec, kind, threads, profile))
        return True

    def run(self, key: str, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        held = self._executors.get(key)
        if held is None:
            raise ExecutorError(f"slot {self.slot} has no executor {key!r} loaded")
        return held[1].run(inputs, output_names)

    def unload(self, key: str) -> None:
        held = self._executors.pop(key, None)
        if held is not None:
            held[1].close()


class RayExecutor(Executor):
    """One model's executor on a slot's actor, driven from the serving process's slot worker."""

    def __init__(self, spec: ModelSpec, actor: Any, key: str, placement: SlotPlacement) -> None:
        self.spec = spec
        self._actor = actor
        self._key = key
        self.placement = placement

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        try:
            return ray.get(self._actor.run.remote(self._key, dict(inputs), list(output_names)))
        except ray.exceptions.RayActorError as exc:
            raise SlotLostError(
                f"model {self.spec.name!r}: slot {self.placement.slot} on node {self.placement.node_ip} "
                f"is gone ({type(exc).__name__})"
            ) from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if isinstance(cause, ExecutorError):
                raise ExecutorError(str(cause)) from None
            raise ExecutorError(f"model {self.spec.name!r}: slot {self.placement.slot} failed: {cause}") from None

    def close(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError):  # an actor that is gone holds nothing
            self._actor.unload.remote(self._key)  # fire and forget


class RayBackends:
    """The slots of a Ray cluster: how many (its CPUs ÷ threads per slot, unless given), and an executor
    factory for the serving core (``ServingConfig.executor_factory``)."""

    def __init__(
        self,
        address: str,
        *,
        slots: int | None = None,
        threads_per_slot: int | None = None,
        namespace: str = "squishy",
    ) -> None:
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            try:
                ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayClusterError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
        threads = threads_per_slot or 1
        if threads < 1:
            raise RayClusterError(f"--threads-per-slot must be at least 1, got {threads}")
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = slots if slots is not None else cpus // threads
        if count < 1:
            raise RayClusterError(f"the Ray cluster has {cpus} CPUs: not enough for one slot of {threads} thread(s)")
        if count * threads > cpus:
            raise RayClusterError(
                f"{count} slots of {threads} thread(s) need {count * threads} CPUs; the Ray cluster has {cpus}"
            )
        self.layout = SlotLayout(count, threads)
        self._actor_class = ray.remote(SlotActor)
        self._actors: dict[int, Any] = {}
        self._placements: dict[int, SlotPlacement] = {}
        self.recovered: list[int] = []  # slots whose actor outlived the previous serving process
        self._lock = threading.Lock()
        self._retire_surplus(count)

    def _retire_surplus(self, count: int) -> None:
        """Slot actors a previous serving process left beyond this one's slots hold CPUs nobody uses."""
        for name in ray.util.list_named_actors():
            index = name.removeprefix(ACTOR_PREFIX)
            if name.startswith(ACTOR_PREFIX) and index.isdigit() and int(index) >= count:
                with contextlib.suppress(ValueError, ray.exceptions.RayError):
                    ray.kill(ray.get_actor(name))
                    logger.info("retired %s, left by a previous serving process", name)

    def executor(self, slot: int, spec: ModelSpec, kind: str, threads: int, profile: Profile | None) -> Executor:
        """Load ``spec`` on ``slot``'s actor (started on first use) and return its executor."""
        actor, placement = self._actor(slot)
        key = f"{spec.name}/{spec.version}/{spec.model_path}"
        # The Triton config protobuf stays here: executors do not read it, and its generated classes
        # do not pickle.
        shipped = replace(spec, config=None, parameters=dict(spec.parameters))
        try:
            made = ray.get(actor.load.remote(key, shipped, kind, threads, profile))
        except ray.exceptions.RayActorError as exc:
            raise SlotLostError(f"model {spec.name!r}: slot {slot} is gone ({type(exc).__name__})") from None
        except ray.exceptions.RayTaskError as exc:
            raise ExecutorError(f"model {spec.name!r}: slot {slot} cannot load it: {exc.cause}") from None
        if not made:
            logger.info("slot %d kept %s %s: its actor had it loaded already", slot, spec.name, spec.version)
        return RayExecutor(spec, actor, key, placement)

    def placements(self) -> list[SlotPlacement]:
        with self._lock:
            return [self._placements[slot] for slot in sorted(self._placements)]

    def _actor(self, slot: int) -> tuple[Any, SlotPlacement]:
        with self._lock:
            if slot in self._actors:
                return self._actors[slot], self._placements[slot]
            actor, placement = self._start(slot)
            if placement.threads != self.layout.threads_per_slot:  # left by a run with other slots: renew
                ray.kill(actor)
                actor, placement = self._start(slot)
            recovered = placement.loaded > 0
            if recovered:
                self.recovered.append(slot)
            self._actors[slot], self._placements[slot] = actor, placement
            logger.info(
                "slot %d runs on node %s (%s), pid %d%s",
                slot,
                placement.node_ip,
                placement.node_id[:12],
                placement.pid,
                f": recovered, its actor was running with {placement.loaded} model(s)" if recovered else "",
            )
            return actor, placement

    def _start(self, slot: int) -> tuple[Any, SlotPlacement]:
        """The slot's actor: the one running under its name, or a new one. Detached, so that it outlives a
        serving process that crashes and the next one takes it over with its models loaded; a clean stop
        (``close``) ends it."""
        actor = self._actor_class.options(
            name=f"{ACTOR_PREFIX}{slot}",
            lifetime="detached",
            num_cpus=self.layout.threads_per_slot,
            scheduling_strategy="SPREAD",
            max_restarts=0,
            get_if_exists=True,
        ).remote(slot, self.layout.threads_per_slot)
        try:
            return actor, ray.get(actor.placement.remote(), timeout=120)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            raise RayClusterError(f"slot {slot}: its actor did not start on the cluster: {exc}") from None

    def close(self) -> None:
        with self._lock:
            for actor in self._actors.values():
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.kill(actor)
            self._actors.clear()
            self._placements.clear()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()

"""One simulated run: sources send requests, frontends route them by the plan, backends batch and run
them, complex queries fan out stage by stage, and (optionally) the control loop re-plans.

Everything between "rates measured" and "batch dispatched" is the server's own code: the control loop
(``squishy.control``), the placement of plans on slots (``squishy.cluster.assign``), routing
(``squishy.routing``) and the backend turn (``squishy.batching.turn`` over ``ArraySessionQueue``).
This module supplies the substrate: simulated time, arrivals, device timing and the outcomes.

Two ways requests reach the backends:
- **bulk** (a cluster: every backend its own device): arrivals are generated half a second at a time,
  routed in bulk by deficit round robin, and held on the simulated network until their arrival time; a
  backend takes every request that has arrived when it next looks at its queue. Events are per batch,
  not per request. A request that is hopeless on arrival is dropped by the backend's next sweep rather
  than at the door (the same outcome, unless the observed slowdown falls in between).
- **exact** (one machine: ``SimConfig.machine``): each request is admitted when it arrives, as the
  server does: routed to the slot with the shorter backlog where that is clearly better, refused at once
  when hopeless, and every idle slot of the machine then looks at the queues (work stealing).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from squishy.arrivals import Arrivals, RateSchedule, source_streams
from squishy.batching.latency import LatencyModel, prefix_group_table
from squishy.batching.policies import ClipperDispatch, Dispatch, SquishyDispatch, TfServingDispatch
from squishy.batching.queue import ArrayItems, ArraySessionQueue
from squishy.batching.turn import BackendTurn, Slot, Turn, declare_fallbacks
from squishy.cluster.assign import Assignment, SessionShare, assign
from squishy.control import Choice, ControlConfig, ControlLoop, PlanDecision, PlanRequest
from squishy.control.variants import CHOICE_LOAD_MARGIN, VariantChooser, observed_profile
from squishy.profiles import Profile
from squishy.routing import DeficitRoundRobin, TaskRoute, pick_by_backlog, split_by_target
from squishy.scheduler import Allocation, Plan, Session, Settings, Workload, make_plan
from squishy.scheduler.demand import allocation_profile
from squishy.scheduler.queries import stage_names
from squishy.scheduler.replan import replan
from squishy.scheduler.variants import Task
from squishy.scheduler.workload import SessionKey
from squishy.sim.backend import CLASS_BITS, CLASS_MASK, ExecModel, InFlight, Share, SimBackend, SimNode
from squishy.sim.cpu import HostPool, SharedCpu
from squishy.sim.engine import PRIORITY_ARRIVALS, PRIORITY_BACKEND, PRIORITY_CONTROL, PRIORITY_SWITCH, Engine
from squishy.sim.metrics import Metrics
from squishy.sim.systems import SYSTEMS, SystemSpec, planning_profiles, planning_workload

# A sampled batch latency is never below this share of its mean (a normal tail must not go negative).
MIN_LATENCY_SHARE = 0.1
# Outcomes per request, when a run keeps them (``SimConfig.log_batches``).
OUTCOME_GOOD, OUTCOME_LATE, OUTCOME_DROPPED = 1, 2, 3


@dataclass(frozen=True)
class MachineSpec:
    """One machine whose slots see each other's queues (``squishy serve`` on one box)."""

    slots: int
    work_stealing: bool = True


@dataclass(frozen=True)
class RequestCosts:
    """Host CPU milliseconds one request costs outside the device (measured by calibration runs)."""

    frontend_ms: float = 0.0  # at the door: receiving, parsing, validating, routing
    reply_ms: float = 0.0  # encoding and sending the reply (one machine)
    generator_send_ms: float = 0.0  # a load generator on the same machine: sending it
    generator_receive_ms: float = 0.0  # ... and reading the reply
    slot_ms: float = 0.0  # on the slot's thread, outside the executor, per request: gathering inputs, outputs
    slot_batch_ms: float = 0.0  # ... and per batch: taking the turn, reporting
    # CPU a batch takes on this machine while serving, as a multiple of its profiled ℓ(b): the profiler
    # measures the slots alone, and the frontend's work beside them slows them (shared caches, memory).
    execution_factor: float = 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestCosts:
        return cls(**{key: float(value) for key, value in data.items()})


@dataclass(frozen=True)
class HostSpec:
    """The host CPU of every simulated machine (``SimConfig.host`` None: host work is free).

    On a cluster node (one device each) ``cores`` host cores serve each request's frontend handling and
    pre/post-processing first come, first served; a system that does not overlap pre/post-processing
    does it in the device's own thread instead (one of the cores). On one CPU machine
    (``SimConfig.machine``) the slots, the server's event loop and a load generator on the same box share
    ``cores`` by processor sharing.
    """

    cores: float
    costs: RequestCosts = field(default_factory=RequestCosts)  # every model's, unless ``per_model`` says
    per_model: Mapping[str, RequestCosts] = field(default_factory=dict)

    def costs_for(self, model: str) -> RequestCosts:
        return self.per_model.get(model, self.costs)

    @classmethod
    def from_settings(cls, settings: Settings) -> HostSpec | None:
        """The host the planner was told about (``Settings.host_cores``), or None when it was told none."""
        if settings.host_cores <= 0:
            return None
        return cls(settings.host_cores, RequestCosts(frontend_ms=settings.frontend_ms))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostSpec:
        data = dict(data)
        costs = {k: data.pop(k) for k in list(data) if k in RequestCosts.__dataclass_fields__}
        per_model = {m: RequestCosts.from_dict(c) for m, c in dict(data.pop("per_model", {})).items()}
        return cls(
            cores=float(data.pop("cores")),
            costs=RequestCosts.from_dict(costs),
            per_model=per_model,
            **{k: float(v) for k, v in data.items()},
        )


@dataclass(frozen=True)
class RequestTrace:
    """Explicit requests, replayed as given: send times (ms, ascending), the source each is for (an index
    into the workload's sessions), and optionally inputs per request and priority levels."""

    send_ms: np.ndarray
    source: np.ndarray
    rows: np.ndarray | None = None
    priority: np.ndarray | None = None


@dataclass(frozen=True)
class SimConfig:
    duration_s: float = 30.0
    warmup_s: float = 2.0
    seed: int = 0
    network_ms: float = 1.0  # one way, frontend → backend, and between query stages
    model_load_ms: float = 2000.0  # before a moved session serves on its new backend
    arrivals: Arrivals = field(default_factory=Arrivals)
    rate_schedule: RateSchedule = field(default_factory=RateSchedule)
    scale: float = 1.0  # every source's rate is multiplied by this
    chunk_ms: float = 500.0  # arrivals are generated and routed this far ahead
    tick_ms: float = 1000.0  # time-series resolution (and the control loop's tick when it has none)
    control: ControlConfig | None = None  # None: the initial plan serves the whole run
    capacity: int | None = None  # backends the control loop may plan (None: the machine's slots, or any)
    machine: MachineSpec | None = None  # one machine with this many slots; None: one device per backend
    trace: RequestTrace | None = None  # replay these requests instead of generating arrivals
    device_slowdown: float = 1.0  # batches take this multiple of the profiled ℓ(b) on the device
    host: HostSpec | None = None  # host CPU as a resource (None: free)
    # Stop once more than this share of the run's expected requests is bad: a load search only needs
    # to know that the target is missed, not by how much (None: always run to the end).
    stop_bad_share: float | None = None
    log_batches: bool = False  # keep every batch, drop and per-request outcome (tests, small runs)
    variant_load_margin: float = CHOICE_LOAD_MARGIN  # tasks' variants are chosen for the rates times this


@dataclass
class RequestClass:
    """Requests of one plain session, or of one stage of one query."""

    index: int
    model: str
    source: int  # the top-level source (session or query) it counts for
    slo_ms: float  # the session's SLO, or the query's end-to-end SLO
    pre_ms: float
    post_ms: float
    share_ms: float  # host CPU of pre/post-processing per request: its share of its frame's
    query: int = -1  # index into the workload's queries, -1 for a plain session
    stage_name: str = ""
    children: list[tuple[int, float]] = field(default_factory=list)  # (class index, gamma)
    host_work_ms: float = 0.0  # host CPU a request of this class costs where it enters (see _host_work)
    task: int = -1  # index into the simulation's tasks, -1 for a plain session or a query stage
    task_entry: bool = False  # a task's requests before the choice of variant routes them to one


class RequestTable:
    """Per-request state for requests that need it: every query (outstanding stage requests, latest
    reply, failure) and, on the exact path, every plain request (its send time)."""

    def __init__(self) -> None:
        size = 1 << 16
        self.send_ms = np.zeros(size)
        self.slo_ms = np.zeros(size)
        self.source = np.zeros(size, dtype=np.int32)
        self.outstanding = np.zeros(size, dtype=np.int64)
        self.last_reply_ms = np.zeros(size)
        self.failed = np.zeros(size, dtype=bool)
        self.outcome = np.zeros(size, dtype=np.int8)
        self.origin = np.full(size, -1, dtype=np.int64)  # index in the replayed trace (-1: generated)
        self.arrival_ms = np.zeros(size)  # when the server stamped it (a machine's CPU modelled)
        self.count = 0

    def new(self, source: int, sends_ms: np.ndarray, slo_ms: float) -> np.ndarray:
        count = len(sends_ms)
        while self.count + count > len(self.send_ms):
            for name in (
                "send_ms",
                "slo_ms",
                "source",
                "outstanding",
                "last_reply_ms",
                "failed",
                "outcome",
                "origin",
                "arrival_ms",
            ):
                old = getattr(self, name)
                grown = np.zeros(2 * len(old), dtype=old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        ids = np.arange(self.count, self.count + count, dtype=np.int64)
        self.send_ms[ids] = sends_ms
        self.slo_ms[ids] = slo_ms
        self.source[ids] = source
        self.outstanding[ids] = 1
        self.count += count
        return ids


@dataclass
class _Exact:
    """Requests on their way to one machine, admitted one by one at their arrival time (ascending)."""

    arrivals: np.ndarray = field(default_factory=lambda: np.empty(0))
    deadlines: np.ndarray = field(default_factory=lambda: np.empty(0))
    tags: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    priority: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    head: int = 0
    scheduled_ms: float = math.inf  # when the cursor event next runs

    def add(
        self, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray, rows: np.ndarray, pri: np.ndarray
    ) -> None:
        head = self.head
        columns = [
            np.concatenate((old[head:], new))
            for old, new in zip(
                (self.arrivals, self.deadlines, self.tags, self.rows, self.priority),
                (arrivals, deadlines, tags, rows, pri),
                strict=True,
            )
        ]
        if len(arrivals) and head < len(self.arrivals) and arrivals[0] < self.arrivals[-1]:
            order = np.argsort(columns[0], kind="stable")
            columns = [c[order] for c in columns]
        self.arrivals, self.deadlines, self.tags, self.rows, self.priority = columns
        self.head = 0

    def next_ms(self) -> float:
        return float(self.arrivals[self.head]) if self.head < len(self.arrivals) else math.inf


class _SimPlanner:
    """The control loop's planner in the simulator: rates per source (sessions, then queries)."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation

    def _workload(self, rates: Mapping[Hashable, float]) -> Workload:
        """Sessions in the order of ``rates``, as the server's planner takes them: plain sessions' (and
        queries') rates by source index, a task's variants' by model name (the keys ``_SimChooser`` gives)."""
        workload = self.simulation.workload
        n_sessions = len(workload.sessions)
        variants = self.simulation.variant_sessions
        sessions = []
        for key, rate in rates.items():
            if isinstance(key, str):
                sessions.append(replace(variants[key], rate=float(rate)))
            elif isinstance(key, int) and key < n_sessions:
                sessions.append(replace(workload.sessions[key], rate=float(rate)))
        return replace(
            workload,
            sessions=tuple(sessions),
            queries=tuple(
                replace(q, rate=float(rates.get(n_sessions + i, 0.0))) for i, q in enumerate(workload.queries)
            ),
        )

    def fresh(self, rates: Mapping[Hashable, float]) -> Plan:
        system = self.simulation.system
        return make_plan(
            self._workload(rates),
            self.simulation.observed_planning(),
            policy=system.policy,
            prefix_batching=system.prefix_batching,
            query_analysis=system.query_analysis,
        )

    def incremental(self, previous: Plan, rates: Mapping[Hashable, float]) -> Plan:
        if self.simulation.system.policy != "squishy":
            return self.fresh(rates)
        return replan(previous, self._workload(rates), self.simulation.observed_planning()).plan


class _SimChooser:
    """The server's chooser of variants (``VariantChooser``) over the simulation's sources: plain sessions
    are named ``session:<index>`` for it, tasks by their names, variant sessions by their models."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        sim = simulation
        self.plain = {f"session:{i}": i for i in range(len(sim.workload.sessions))}
        first_task = len(sim.workload.sessions) + len(sim.workload.queries)
        self.task_source = {task.name: first_task + i for i, task in enumerate(sim.tasks)}
        self.chooser = VariantChooser(
            tasks=lambda: {task.name: task for task in sim.tasks},
            profiles=self._profiles,
            slo_ms=lambda name: sim.workload.sessions[self.plain[name]].slo_ms,
            settings=sim.workload.settings,
            load_margin=sim.config.variant_load_margin,
        )

    def _profiles(self) -> dict[str, Profile]:
        """Each session's planning profile, scaled by the slowdown its backends observed (as the server's)."""
        sim = self.simulation
        observed = sim.observed_planning()
        return {**observed, **{name: observed[sim.workload.sessions[i].model] for name, i in self.plain.items()}}

    def choose(self, rates: Mapping[Hashable, float], capacity: int | None) -> Choice:
        source: dict[str, int] = {**self.plain, **self.task_source}
        names: dict[Hashable, str] = {index: name for name, index in source.items()}
        choice = self.chooser.choose({names[key]: rate for key, rate in rates.items()}, capacity)

        def keyed(mapping: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            return {source.get(str(key), key): value for key, value in mapping.items()}

        return replace(
            choice,
            session_rates=keyed(choice.session_rates),
            routes=keyed(choice.routes),
            splits=keyed(choice.splits),
            fallbacks=keyed(choice.fallbacks),
            served=keyed(choice.served),
            accuracy=keyed(choice.accuracy),
        )


class Simulation:
    def observed_planning(self) -> dict[str, Profile]:
        """The planning profiles, each session's scaled by the slowdown its backends observed: the plan
        follows the machine as it runs, as the server's does (``ServingCore``'s planner)."""
        sessions = [*self.workload.sessions, *self.variant_sessions.values()]
        observed = dict(self.planning)
        for session in sessions:
            latency = self._latency_models.get(session.key)
            slowdown = latency.slowdown if latency is not None else 1.0
            observed[session.model] = observed_profile(self.planning[session.model], slowdown, self.workload.settings)
        # A prefix group's trunk, by the slowdown its group's batches observed (as the server's trunk).
        trunks = {group.prefix for group in self.workload.prefix_groups}
        for key, latency in self._latency_models.items():
            if key.model in trunks:
                trunk = self.planning[key.model]
                observed[key.model] = observed_profile(trunk, latency.slowdown, self.workload.settings)
        return observed

    def __init__(
        self,
        workload: Workload,
        profiles: Mapping[str, Profile],
        plan: Plan | None,
        system: SystemSpec | str = "squishy",
        config: SimConfig | None = None,
        tasks: Sequence[Task] = (),
    ) -> None:
        """``plan`` None: the control loop makes the first plan, from the minimum rates (as the server
        does at start); it needs ``config.control``. ``tasks`` are served by model variants, chosen by the
        server's own chooser at each re-plan (they need the control loop, and sessions beside them but no
        queries)."""
        self.system = SYSTEMS[system] if isinstance(system, str) else system
        self.config = config or SimConfig()
        self.workload = workload
        self.profiles = dict(profiles)
        self.planning = planning_profiles(self.system, self.profiles)
        self.engine = Engine()
        cfg = self.config
        self.end_ms = cfg.duration_s * 1000.0
        self.overlap = self.system.overlap
        self.exact = cfg.machine is not None
        seed = cfg.seed
        self.latency_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        self.fanout_rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))

        self.tasks = tuple(tasks)
        self.variant_sessions = _variant_sessions(self.tasks, workload, profiles, self.config, plan)
        # Sources: plain sessions, then queries, then tasks.
        names = [f"{s.model}@{s.slo_ms:g}ms" for s in workload.sessions] + [f"query:{q.name}" for q in workload.queries]
        names += [task.name for task in self.tasks]
        base_rates = [s.rate for s in workload.sessions] + [q.rate for q in workload.queries]
        base_rates += [task.rate for task in self.tasks]
        self.base_rates = np.asarray(base_rates, dtype=float)
        # The load generator's streams for the same seed (``squishy.arrivals``): the same requests.
        self.streams = source_streams(
            [rate * cfg.scale for rate in base_rates], cfg.arrivals, seed, cfg.rate_schedule, cfg.scale
        )
        self.metrics = Metrics(names, cfg.warmup_s * 1000.0, self.end_ms, cfg.tick_ms)
        self.classes: list[RequestClass] = []
        for index, session in enumerate(workload.sessions):
            self._add_class(session.model, index, session.slo_ms)
        self.root_class: list[int] = []
        for q_index, query in enumerate(workload.queries):
            source = len(workload.sessions) + q_index
            first = len(self.classes)
            for name, stage, parent, _ in stage_names(query.root):
                cls = self._add_class(stage.model, source, query.slo_ms, query=q_index, stage_name=name)
                if parent >= 0:
                    self.classes[first + parent].children.append((cls.index, stage.gamma))
            self.root_class.append(first)
        # A task: one class its requests enter as, and one per variant that may answer them.
        self.task_entry_class: list[int] = []
        self.task_variant_class: list[dict[str, int]] = []
        self.task_routes = [TaskRoute() for _ in self.tasks]
        first_task = len(workload.sessions) + len(workload.queries)
        for t_index, task in enumerate(self.tasks):
            entry = self._add_class(task.variants[0].model, first_task + t_index, task.slo_ms)
            entry.task, entry.task_entry = t_index, True
            self.task_entry_class.append(entry.index)
            by_model = {}
            for variant in task.variants:
                cls = self._add_class(variant.model, first_task + t_index, task.slo_ms)
                cls.task = t_index
                by_model[variant.model] = cls.index
            self.task_variant_class.append(by_model)
        # Per task and variant: requests it answered within their deadline (by the backend's clock) and
        # requests that fell back to it from a costlier variant, both after the warm-up.
        self.variant_on_time = [dict.fromkeys(by_model, 0) for by_model in self.task_variant_class]
        self.variant_fell_back = [dict.fromkeys(by_model, 0) for by_model in self.task_variant_class]
        self.task_of_model = {v.model: i for i, task in enumerate(self.tasks) for v in task.variants}
        self.task_shed = [0] * len(self.tasks)
        if len(self.classes) > CLASS_MASK:
            raise ValueError(f"too many request classes ({len(self.classes)}) for the tag encoding")
        # The simulated machines' host CPU: as configured, or as the workload tells the planner.
        self.host = cfg.host if cfg.host is not None else HostSpec.from_settings(workload.settings)
        if not self.exact:
            # Re-plans and burst limits see the host as this system's planner does.
            self.workload = workload = planning_workload(self.system, workload, self.host)
        if self.host is not None:
            for cls in self.classes:
                cls.host_work_ms = self._host_work(cls)
        self.stage_served = np.zeros(len(self.classes), dtype=np.int64)
        self.stage_late = np.zeros(len(self.classes), dtype=np.int64)
        self.stage_dropped = np.zeros(len(self.classes), dtype=np.int64)
        self.requests = RequestTable()
        self.queries = self.requests  # queries live in the request table

        # Devices and routing.
        self.timeouts = self.system.dispatch == "tf-serving"  # only that rule waits for a timeout
        self.backends: dict[int, SimBackend] = {}  # slot id → backend
        self.node: SimNode | None = None  # the one machine (exact path)
        if cfg.machine is not None:
            self.node = SimNode([SimBackend(BackendTurn(i), timeouts=self.timeouts) for i in range(cfg.machine.slots)])
            self.backends = {b.turn.index: b for b in self.node.backends}
        self.assignment = Assignment({}, {})
        self.routes: list[tuple[list[tuple[SimBackend, Slot]], DeficitRoundRobin[int]] | None] = []
        self.stage_deadline_offset_ms = np.zeros(len(self.classes))
        self.plan: Plan | None = None
        self.pending_plan: Plan | None = None
        self._exact = _Exact()
        self._installing = False
        self._loading_until_ms: float | None = None  # a capped cluster's added backends load until then
        # Host CPU: a pool per cluster node, or one shared CPU for the machine.
        self.pools: dict[int, HostPool] = {}
        self._collecting: dict[int, list[tuple[Any, ...]]] | None = None
        self.cpu: SharedCpu | None = None
        if self.host is not None and cfg.machine is not None:
            self.cpu = SharedCpu(self.engine, self.host.cores, PRIORITY_BACKEND)
            self.slot_threads = [self.cpu.thread(f"slot-{i}") for i in range(cfg.machine.slots)]
            self.loop_thread = self.cpu.thread("event-loop")
            models = [self.host.costs, *self.host.per_model.values()]
            generator = any(c.generator_send_ms + c.generator_receive_ms > 0 for c in models)
            self.generator_thread = self.cpu.thread("load-generator") if generator else None
        self._latency_models: dict[SessionKey, LatencyModel] = {}
        self._exec_cache: dict[tuple[Any, ...], ExecModel] = {}
        self._scheduled_cache: dict[tuple[Any, ...], Profile] = {}
        self._table_cache: dict[tuple[Any, ...], np.ndarray] = {}
        # (slot, start ms, finish ms, send times, model) per batch; ("drop", ms, send times) per drop; and
        # (slot, start ms, request ids) per batch (ids on the exact path, -1 on the bulk path).
        self.batch_log: list[tuple[Any, ...]] = []
        self.batch_members: list[tuple[int, float, list[int]]] = []

        # Control loop and time series.
        capacity = cfg.capacity if cfg.capacity is not None else (cfg.machine.slots if cfg.machine else None)
        self.control: ControlLoop | None = None
        if cfg.control is not None:
            chooser = _SimChooser(self) if self.tasks else None
            self.control = ControlLoop(cfg.control, _SimPlanner(self), capacity=capacity, chooser=chooser)
        self._initial_plan = plan
        self.replans: list[dict[str, Any]] = []
        self.stopped_early = False
        expected = float(self.base_rates.sum()) * cfg.scale * max(cfg.duration_s - cfg.warmup_s, 0.0)
        self._bad_limit = None if cfg.stop_bad_share is None else cfg.stop_bad_share * expected
        self.backend_series: list[int] = []
        self.utilization_series: list[float] = []
        self._busy_total_ms = 0.0
        self._busy_at_tick_ms = 0.0

    # --------------------------------------------------------------------------------- set-up
    def _add_class(self, model: str, source: int, slo_ms: float, query: int = -1, stage_name: str = "") -> RequestClass:
        profile = self.profiles[model]
        cls = RequestClass(
            index=len(self.classes),
            model=model,
            source=source,
            slo_ms=slo_ms,
            pre_ms=profile.preprocess_ms,
            post_ms=profile.postprocess_ms,
            share_ms=profile.processing_share_ms,
            query=query,
            stage_name=stage_name,
        )
        self.classes.append(cls)
        return cls

    def _host_work(self, cls: RequestClass) -> float:
        """Host CPU (ms) one request of ``cls`` costs where it enters: the frontend's handling, and, when
        the system overlaps it, its share of its frame's pre/post-processing (``processing_share_ms``).
        A query's stages are charged at its root, with each stage's expected count (the product of the
        fan-outs above it): their crops and post-processing run on the machine that holds the frame."""
        host = self.host
        assert host is not None
        own = host.costs_for(cls.model).frontend_ms
        if self.overlap:
            own += cls.share_ms
        return own + sum(gamma * self._host_work(self.classes[child]) for child, gamma in cls.children)

    def _pool(self, backend_id: int) -> HostPool:
        pool = self.pools.get(backend_id)
        if pool is None:
            assert self.host is not None
            cores = int(self.host.cores) - (0 if self.overlap else 1)  # no overlap: the device's thread does it
            pool = self.pools[backend_id] = HostPool(max(cores, 1))
        return pool

    def _exec_model(self, allocation: Allocation) -> ExecModel:
        members = tuple(m.model for m in allocation.members)
        key = (allocation.model, members)
        cached = self._exec_cache.get(key)
        if cached is not None:
            return cached
        per_request = 0.0
        if allocation.members:
            trunk = self.profiles[allocation.model]
            member_profiles = [self.profiles[m] for m in members]
            if not self.overlap:
                per_request = max(p.processing_share_ms for p in member_profiles)
            size = min(trunk.max_batch, *(p.max_batch for p in member_profiles))  # what every member can take
            trunk_ms = _table(trunk, size)
            suffixes = tuple(np.maximum(0.0, _table(p, size) - trunk_ms) for p in member_profiles)
            slots = {c.index: members.index(c.model) for c in self.classes if c.model in members}
            plain = trunk_ms + np.arange(size + 1) * per_request
            exe = ExecModel(plain, _std_table(trunk, size), slots, trunk_ms, suffixes, per_request)
        else:
            profile = self.profiles[allocation.model]
            if not self.overlap:
                per_request = profile.processing_share_ms
            size = profile.max_batch
            table = _table(profile, size) + np.arange(size + 1) * per_request
            table[0] = 0.0
            exe = ExecModel(table, _std_table(profile, size), device_per_request_ms=per_request)
        self._exec_cache[key] = exe
        return exe

    def _drop_table(self, allocation: Allocation, exe: ExecModel) -> np.ndarray:
        """ℓ(n) the queue's drop rule uses: the device's expected time for n requests."""
        if not allocation.members:
            return exe.table_ms
        # A prefix batch's time depends on its mix; use the plan's mix (members' rate shares), as the
        # scheduler does when it sizes the group.
        key = (allocation.model, tuple((m.model, round(m.rate, 3)) for m in allocation.members))
        cached = self._table_cache.get(key)
        if cached is None:
            size = exe.max_batch
            per_request = np.arange(size + 1) * exe.device_per_request_ms
            cached = prefix_group_table(allocation, self.profiles, size) + per_request
            self._table_cache[key] = cached
        return cached

    def _latency_model(self, allocation: Allocation, exe: ExecModel) -> LatencyModel:
        """The session's ℓ model for early drop, shared by all its queues (one observed slowdown)."""
        table = self._drop_table(allocation, exe)
        model = self._latency_models.get(allocation.key)
        if model is None:
            model = self._latency_models[allocation.key] = LatencyModel(table)
        elif model.table_ms is not table:
            model.retable(table)  # a new mix: a new table, the same observed slowdown
        return model

    def _dispatch(self, allocation: Allocation, exe: ExecModel) -> tuple[Dispatch, int]:
        """The dispatch rule for one allocation and the batch size it is planned for."""
        system = self.system
        if system.dispatch == "clipper":
            return ClipperDispatch(max_batch=exe.max_batch, drop=system.drop), exe.max_batch
        if system.dispatch == "tf-serving":
            slo = allocation.slo_ms
            fits = np.flatnonzero(2.0 * exe.table_ms[1:] <= slo + 1e-9)
            batch = int(fits[-1]) + 1 if len(fits) else 1
            timeout = max(0.0, slo - 2.0 * float(exe.table_ms[batch]))
            return TfServingDispatch(batch=batch, timeout_ms=timeout, drop=system.drop), batch
        return SquishyDispatch(drop=system.drop), allocation.batch

    def _scheduled(self, allocation: Allocation) -> Profile:
        """The profile the scheduler sized this allocation with (margins included; a prefix group's
        synthesized profile), as the runtime's burst limits see it."""
        key = (allocation.model, tuple((m.model, m.slo_ms, round(m.rate, 3)) for m in allocation.members))
        cached = self._scheduled_cache.get(key)
        if cached is None:
            cached = allocation_profile(allocation, self.planning, self.workload.settings)
            self._scheduled_cache[key] = cached
        return cached

    def _scheduled_latency(self, allocation: Allocation, batch: int) -> float:
        profile = self._scheduled(allocation)
        return profile.batch_latency_ms(batch) if batch <= profile.max_batch else math.inf

    def _max_batch(self, allocation: Allocation) -> int:
        return min(self._scheduled(allocation).max_batch, self._exec_model(allocation).max_batch)

    def _new_slot(self, share: SessionShare, current: Slot | None) -> Slot:
        """The turn slot for ``share``; a session that stays on its backend keeps its network buffer."""
        allocation = share.allocation
        exe = self._exec_model(allocation)
        dispatch, planned = self._dispatch(allocation, exe)
        queue = ArraySessionQueue(self._latency_model(allocation, exe), self.system.drop)
        batch = share.batch if self.system.dispatch == "squishy" else planned
        payload = current.payload if current is not None else Share(share.key, allocation.slo_ms, exe)
        payload.exe, payload.slo_ms = exe, allocation.slo_ms
        return Slot(share.key, queue, batch, dispatch, payload)

    # ------------------------------------------------------------------------------- plans
    def _install(self, plan: Plan) -> None:
        """Make ``plan`` the running plan now; queued requests follow their sessions."""
        now = self.engine.now_ms
        cfg = self.config
        moving: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # Requests not yet at a backend are routed afresh under the new plan's weights.
        for backend in self.backends.values():
            for slot in backend.turn.slots:
                arrivals, deadlines, tags = slot.payload.take_pending_after(now)
                if len(tags):
                    moving.append((arrivals, deadlines, tags))
        forwarded: list[ArrayItems] = []
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        def evict(slot: Slot) -> None:
            queued = slot.queue.drain()
            if len(queued):
                forwarded.append(queued)
            arrivals, deadlines, tags = slot.payload.drain_pending()
            if len(tags):
                pending.append((arrivals, deadlines, tags))

        slot_count = cfg.machine.slots if cfg.machine is not None else None
        assignment = assign(
            plan,
            self.assignment.backend_slot,
            slot_count,
            self._scheduled_latency,
            self._max_batch,
            burst=self.system.dispatch == "squishy",
        )
        stealing = cfg.machine is not None and cfg.machine.work_stealing
        stealable = {share.key for p in assignment.slots.values() for share in p.shares} if stealing else set()
        if cfg.machine is None:
            for slot_id in assignment.slots:
                if slot_id not in self.backends:
                    backend = SimBackend(BackendTurn(slot_id), timeouts=self.timeouts)
                    SimNode([backend])
                    self.backends[slot_id] = backend
        for slot_id, backend in self.backends.items():
            slot_plan = assignment.slots.get(slot_id)
            shares = slot_plan.shares if slot_plan is not None else ()
            slots = [self._new_slot(share, backend.turn.slot(share.key)) for share in shares]
            if self.tasks:
                declare_fallbacks(slots, self._fallback_chains())
            if slot_plan is None and cfg.machine is None:
                if not backend.retired:
                    for slot in backend.turn.assign([]):
                        evict(slot)
                    backend.retired = True
                continue
            budget = (slot_plan.steal_budget_ms if slot_plan is not None else math.inf) if stealing else 0.0
            fcfs = slot_plan is not None and slot_plan.duty_cycle_ms is None
            for slot in backend.turn.assign(slots, fcfs=fcfs, steal_budget_ms=budget, stealable=stealable):
                evict(slot)
            for slot in backend.turn.slots:
                slot.payload.backend = backend
        if cfg.machine is None:
            self.backends = {k: b for k, b in self.backends.items() if not b.retired}
        self.assignment = assignment
        self.plan = plan
        self._build_routes(plan)
        for arrivals, deadlines, tags in moving:
            self._route_mixed(arrivals, deadlines, tags)
        for arrivals, deadlines, tags in pending:
            self._route_mixed(arrivals, deadlines, self._to_task_route(tags))
        self._installing = True  # the server re-queues moved requests under its lock, then workers look
        for items in forwarded:
            self._forward(items, now + (0.0 if self.exact else cfg.network_ms))
        self._installing = False
        if self.node is not None:
            self._settle(self.node, None)
        else:
            for backend in list(self.backends.values()):
                if backend.inflight is None and backend.node is not None:
                    self._settle(backend.node, backend)

    def _forward(self, items: ArrayItems, arrival_ms: float) -> None:
        """Queued requests whose session left their backend go to its new backends (a task's requests to
        the variant now chosen for it, as the server moves them)."""
        if self.tasks:
            items = replace(items, tags=self._to_task_route(items.tags))
        if self.exact:
            rows = items.sizes if items.sizes is not None else np.ones(len(items), dtype=np.int64)
            pri = items.priorities if items.priorities is not None else np.zeros(len(items), dtype=np.int64)
            for i in range(len(items)):
                self._admit(
                    float(items.deadlines_ms[i]),
                    float(items.arrivals_ms[i]),
                    int(items.tags[i]),
                    int(rows[i]),
                    int(pri[i]),
                )
            return
        self._route_mixed(np.full(len(items), arrival_ms), items.deadlines_ms, items.tags)

    def _build_routes(self, plan: Plan) -> None:
        routes: list[tuple[list[tuple[SimBackend, Slot]], DeficitRoundRobin[int]] | None] = []
        for cls in self.classes:
            if cls.task_entry:  # routed to a variant's class first (``_task_target``)
                routes.append(None)
                continue
            slo = cls.slo_ms
            if cls.query >= 0:
                query = self.workload.queries[cls.query]
                split = plan.query_slo_split.get(query.name, {})
                slo = split.get(cls.stage_name, query.slo_ms)
                # Slack carries forward: a stage's deadline is the query's send time plus the budgets of
                # the stages up to it; a leaf may use whatever is left of the end-to-end SLO.
                self.stage_deadline_offset_ms[cls.index] = (
                    query.slo_ms if not cls.children else self._cumulative_budget(cls, split)
                )
            targets = []
            weights = []
            for slot_id, key, rate in self.assignment.routes(plan, cls.model, slo):
                if rate <= 0:
                    continue
                backend = self.backends[slot_id]
                slot = backend.turn.slot(key)
                assert slot is not None
                targets.append((backend, slot))
                weights.append(rate)
            routes.append((targets, DeficitRoundRobin(list(range(len(targets))), weights)) if targets else None)
        self.routes = routes
        # Shares that only ever see one request class skip the per-batch class split.
        seen: dict[int, set[int]] = {}
        for cls, route in zip(self.classes, routes, strict=True):
            for _, slot in route[0] if route else []:
                seen.setdefault(id(slot), set()).add(cls.index)
        for backend in self.backends.values():
            for slot in backend.turn.slots:
                classes = seen.get(id(slot), set())
                slot.payload.single_class = next(iter(classes)) if len(classes) == 1 else -1

    def _cumulative_budget(self, cls: RequestClass, split: Mapping[str, float]) -> float:
        query = self.workload.queries[cls.query]
        named = stage_names(query.root)
        by_name = {name: (index, parent) for index, (name, _, parent, _) in enumerate(named)}
        total = 0.0
        index = by_name[cls.stage_name][0]
        while index >= 0:
            name = named[index][0]
            total += split.get(name, query.slo_ms / len(named))
            index = named[index][2]
        return min(total, query.slo_ms)

    # ------------------------------------------------------------------------------ routing
    def _route(self, cls_index: int, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray) -> None:
        """Requests of one class on their way: exact (admitted one by one) or bulk (onto the network)."""
        if self.classes[cls_index].task_entry and not self.exact:
            self._route_task(self.classes[cls_index], arrivals, deadlines, tags)
            return
        if self.exact:
            rows = np.ones(len(tags), dtype=np.int64)
            self._exact.add(arrivals, deadlines, tags, rows, np.zeros(len(tags), dtype=np.int64))
            self._schedule_cursor()
            return
        route = self.routes[cls_index]
        if route is None:  # no backend serves it (a session the plan thinks idle): error replies
            self._dropped(deadlines, tags)
            return
        targets, drr = route
        if len(targets) == 1:
            self._deliver(targets[0], cls_index, arrivals, deadlines, tags)
            return
        chosen = drr.take(len(tags))
        for target, positions in zip(targets, split_by_target(chosen, len(targets)), strict=True):
            if len(positions):
                self._deliver(target, cls_index, arrivals[positions], deadlines[positions], tags[positions])

    def _route_task(self, entry: RequestClass, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray) -> None:
        """A task's requests, in arrival order, each to the class of the variant its route names (or shed)."""
        targets = np.array([self._task_target(entry.task) for _ in range(len(tags))], dtype=np.int64)
        shed = targets < 0
        if shed.any():
            self._dropped(deadlines[shed], tags[shed])
        for cls_index in np.unique(targets[~shed]).tolist():
            mine = targets == cls_index
            self._route(cls_index, arrivals[mine], deadlines[mine], (tags[mine] & ~CLASS_MASK) | cls_index)

    def _to_task_route(self, tags: np.ndarray) -> np.ndarray:
        """``tags`` with every task request's class set to the variant its task's route now names."""
        if not self.tasks or len(tags) == 0:
            return tags
        classes = tags & CLASS_MASK
        out = tags.copy()
        for cls_index in np.unique(classes).tolist():
            cls = self.classes[cls_index]
            route = self.task_routes[cls.task].route if cls.task >= 0 else None
            if route is None:
                continue
            target = self.task_variant_class[cls.task][str(route)]
            if target != cls_index:
                mine = classes == cls_index
                out[mine] = (tags[mine] & ~CLASS_MASK) | target
        return out

    def _task_target(self, task: int) -> int:
        """The class of the variant that answers a task's next request, -1 when it is shed (beyond what
        the plan serves, or no variant chosen yet): the server's admission (``TaskRoute``)."""
        route = self.task_routes[task]
        if route.route is None or not route.admit():
            if self.engine.now_ms >= self.metrics.warmup_ms:
                self.task_shed[task] += 1
            return -1
        return self.task_variant_class[task][str(route.target())]

    def _route_mixed(self, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray) -> None:
        order = np.argsort(arrivals, kind="stable")
        arrivals, deadlines, tags = arrivals[order], deadlines[order], tags[order]
        classes = tags & CLASS_MASK
        for cls_index in np.unique(classes).tolist():
            mask = classes == cls_index
            self._route(cls_index, arrivals[mask], deadlines[mask], tags[mask])

    def _deliver(
        self,
        target: tuple[SimBackend, Slot],
        cls_index: int,
        arrivals: np.ndarray,
        deadlines: np.ndarray,
        tags: np.ndarray,
    ) -> None:
        if self._collecting is not None:  # new requests entering a node: through its host pool first
            self._collecting.setdefault(target[0].turn.index, []).append((target, cls_index, arrivals, deadlines, tags))
            return
        self._enqueue(target, arrivals, deadlines, tags)

    def _host_flush(self) -> None:
        """Serve a chunk's new requests on each node's host cores, in arrival order, then queue them."""
        collected, self._collecting = self._collecting, None
        assert collected is not None
        for backend_id, deliveries in collected.items():
            arrivals = np.concatenate([d[2] for d in deliveries])
            work = np.concatenate([np.full(len(d[2]), self.classes[d[1]].host_work_ms) for d in deliveries])
            ready_after = np.concatenate(
                [np.full(len(d[2]), self._ready_after(self.classes[d[1]])) for d in deliveries]
            )
            which = np.concatenate([np.full(len(d[2]), i) for i, d in enumerate(deliveries)])
            # A request whose pre-processing could not end by its deadline is not worth starting.
            latest = np.concatenate([d[3] for d in deliveries]) - ready_after
            order = np.argsort(arrivals, kind="stable")
            starts = np.empty(len(arrivals))
            starts[order] = self._pool(backend_id).serve(arrivals[order], work[order], latest[order])
            ready = starts + ready_after
            for index, (target, _, _, deadlines, tags) in enumerate(deliveries):
                mine = which == index
                shed = np.isnan(ready[mine])
                if shed.any():
                    self._dropped(deadlines[shed], tags[shed])
                    self._enqueue(target, ready[mine][~shed], deadlines[~shed], tags[~shed])
                else:
                    self._enqueue(target, ready[mine], deadlines, tags)

    def _ready_after(self, cls: RequestClass) -> float:
        """From the start of a request's host work to its joining the device queue."""
        assert self.host is not None
        return self.host.costs_for(cls.model).frontend_ms + (cls.pre_ms if self.overlap else 0.0)

    def _enqueue(
        self, target: tuple[SimBackend, Slot], arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray
    ) -> None:
        if len(tags) == 0:
            return
        backend, slot = target
        slot.payload.add_pending(arrivals, deadlines, tags)
        first = float(arrivals.min())
        if backend.inflight is None and first < backend.wake_ms:
            self._wake(backend, first)

    # ------------------------------------------------------------------------- exact arrivals
    def _schedule_cursor(self) -> None:
        first = self._exact.next_ms()
        if first < self._exact.scheduled_ms:
            self._exact.scheduled_ms = max(first, self.engine.now_ms)
            self.engine.schedule(self._exact.scheduled_ms, PRIORITY_ARRIVALS, self._cursor, self._exact.scheduled_ms)

    def _cursor(self, scheduled_ms: float) -> None:
        """Admit arrivals in time order up to (not past) the next other event."""
        exact = self._exact
        if scheduled_ms != exact.scheduled_ms:
            return  # superseded by an earlier cursor
        exact.scheduled_ms = math.inf
        engine = self.engine
        while exact.head < len(exact.arrivals):
            time_ms = float(exact.arrivals[exact.head])
            next_time, next_priority = engine.peek()
            if time_ms > next_time or (time_ms == next_time and next_priority < PRIORITY_ARRIVALS):
                break
            head = exact.head
            exact.head += 1
            engine.advance(max(time_ms, engine.now_ms))
            self._admit(
                float(exact.deadlines[head]),
                time_ms,
                int(exact.tags[head]),
                int(exact.rows[head]),
                int(exact.priority[head]),
            )
        self._schedule_cursor()

    def _admit(self, deadline_ms: float, arrival_ms: float, tag: int, rows: int, priority: int) -> None:
        """One request at the door of the machine: route it, queue it or refuse it, let idle slots look."""
        cls_index = tag & CLASS_MASK
        if self.classes[cls_index].task_entry:
            variant = self._task_target(self.classes[cls_index].task)
            if variant < 0:
                self._dropped(np.array([deadline_ms]), np.array([tag], dtype=np.int64))
                return
            cls_index, tag = variant, (tag & ~CLASS_MASK) | variant
        route = self.routes[cls_index]
        now = self.engine.now_ms
        if route is None:
            self._dropped(np.array([deadline_ms]), np.array([tag], dtype=np.int64))
            return
        targets, drr = route
        index = pick_by_backlog(drr, lambda i: targets[i][0].turn.backlog(targets[i][1].session))
        backend, slot = targets[index]
        if not slot.queue.admit(deadline_ms, arrival_ms, tag, now, rows, priority):
            self._dropped(np.array([deadline_ms]), np.array([tag], dtype=np.int64))
            return
        if not self._installing:
            assert backend.node is not None
            self._settle(backend.node, backend)

    # ----------------------------------------------------------------------------- backends
    def _wake(self, backend: SimBackend, time_ms: float) -> None:
        if time_ms == math.inf or backend.retired:
            return
        backend.version += 1
        backend.wake_ms = max(time_ms, self.engine.now_ms)
        self.engine.schedule(backend.wake_ms, PRIORITY_BACKEND, self._backend_event, backend, backend.version)

    def _backend_event(self, backend: SimBackend, version: int) -> None:
        if version != backend.version:
            return  # superseded by a later wake-up
        backend.wake_ms = math.inf
        inflight = backend.inflight
        if inflight is not None:
            backend.inflight = None
            self._complete(backend, inflight)
            backend.turn.busy = False
        if not backend.retired and backend.node is not None:
            self._settle(backend.node, backend)

    def _settle(self, node: SimNode, first: SimBackend | None) -> None:
        """After a change at ``first``: every idle backend of its machine looks at the queues."""
        now = self.engine.now_ms
        if not self.exact:
            node.absorb(now)
        by_turn = node.by_turn
        for turn in node.machine.settle(now, first.turn if first is not None else None):
            for _, items in turn.dropped:
                self._dropped(items.deadlines_ms, items.tags)
            if turn.fell_back and now >= self.metrics.warmup_ms:
                for _, target, moved in turn.fell_back:
                    model = target.session.model
                    self.variant_fell_back[self.task_of_model[model]][model] += len(moved)
            if turn.slot is not None:
                self._start(by_turn[id(turn.backend)], turn)
        for backend in node.backends:
            if backend.inflight is None and not backend.retired:
                wake = backend.next_event_ms(now)
                if wake < backend.wake_ms:
                    self._wake(backend, wake)

    def _start(self, backend: SimBackend, turn: Turn) -> None:
        now = self.engine.now_ms
        slot = turn.slot
        assert slot is not None
        batch: ArrayItems = turn.batch
        share: Share = slot.payload
        exe = share.exe
        inputs = batch.inputs
        classes = batch.tags & CLASS_MASK if exe.member_slot is not None else None
        mean = exe.mean_ms(inputs, classes) * self.config.device_slowdown
        std = exe.std_ms(inputs)
        duration = (
            mean if std == 0.0 else max(mean * MIN_LATENCY_SHARE, mean + std * self.latency_rng.standard_normal())
        )
        if self.cpu is not None:  # CPU work on the slot's thread, stretched when the cores are shared
            assert self.host is not None
            costs = self.host.costs_for(str(share.key.model))
            python_ms = costs.slot_batch_ms + costs.slot_ms * len(batch)  # gathering, splitting, answering
            duration *= costs.execution_factor
            backend.inflight = InFlight(slot, batch.deadlines_ms, batch.tags, inputs, now, math.nan, math.nan)
            thread = self.slot_threads[backend.turn.index]
            self.cpu.submit(thread, python_ms, _nothing, gil=True)
            self.cpu.submit(thread, duration, self._cpu_batch_done, backend)  # the executor releases the lock
            if self.config.log_batches:
                self.batch_members.append((backend.turn.index, now, ((batch.tags >> CLASS_BITS) - 1).tolist()))
            return
        finish = now + duration
        backend.inflight = InFlight(slot, batch.deadlines_ms, batch.tags, inputs, now, duration, finish)
        if self.config.log_batches:
            sends = self._send_times(batch.deadlines_ms, batch.tags)
            self.batch_log.append((backend.turn.index, now, finish, sends, str(share.key.model)))
            self.batch_members.append((backend.turn.index, now, ((batch.tags >> CLASS_BITS) - 1).tolist()))
        backend.busy_ms += duration
        self._busy_total_ms += duration
        backend.version += 1
        backend.wake_ms = finish
        self.engine.schedule(finish, PRIORITY_BACKEND, self._backend_event, backend, backend.version)

    def _cpu_batch_done(self, backend: SimBackend) -> None:
        inflight = backend.inflight
        assert inflight is not None
        now = self.engine.now_ms
        inflight.finish_ms = now
        inflight.duration_ms = now - inflight.start_ms  # what the slot's thread measures, stretch included
        backend.busy_ms += inflight.duration_ms
        self._busy_total_ms += inflight.duration_ms
        backend.inflight = None
        self._complete(backend, inflight)
        backend.turn.busy = False
        assert backend.node is not None
        self._settle(backend.node, backend)

    # ------------------------------------------------------------------------------ outcomes
    def _complete(self, backend: SimBackend, batch: InFlight) -> None:
        slot = batch.slot
        duration = batch.duration_ms
        slot.queue.latency.observe(batch.inputs, duration)
        slot.dispatch.observe(batch.inputs, duration, slot.payload.slo_ms)
        if self.tasks:
            self._count_variant(slot, batch)
        single = slot.payload.single_class
        tags = batch.batch_tags
        if single >= 0:
            self._served(single, batch.batch_deadlines, tags, batch.finish_ms)
            return
        classes = tags & CLASS_MASK
        first = int(classes[0])
        if classes[-1] == first and (len(classes) < 3 or bool((classes == first).all())):
            self._served(first, batch.batch_deadlines, tags, batch.finish_ms)
            return
        for cls_index in np.unique(classes).tolist():
            mask = classes == cls_index
            self._served(cls_index, batch.batch_deadlines[mask], tags[mask], batch.finish_ms)

    def _count_variant(self, slot: Slot, batch: InFlight) -> None:
        """Requests a task's variant answered within their deadlines, counted by the variant that ran them
        (a request that fell back counts for the cheaper one)."""
        model = slot.session.model
        task = self.task_of_model.get(model)
        if task is None:
            return
        cls = self.classes[self.task_variant_class[task][model]]
        reply = batch.finish_ms + (cls.post_ms if self.overlap else 0.0)
        if self.exact:  # judged as the figures judge it: from the send to the reply's return
            sends = self.requests.send_ms[(batch.batch_tags >> CLASS_BITS) - 1]
            in_time = reply + self.config.network_ms - sends <= cls.slo_ms
        else:
            sends = batch.batch_deadlines - cls.slo_ms
            in_time = batch.batch_deadlines >= reply
        counted = in_time & (sends >= self.metrics.warmup_ms)
        self.variant_on_time[task][model] += int(np.count_nonzero(counted))

    def _fallback_chains(self) -> list[tuple[list[Hashable], float]]:
        return [
            ([SessionKey(str(model), task.slo_ms) for model in route.chain()], task.slo_ms)
            for task, route in zip(self.tasks, self.task_routes, strict=True)
        ]

    def _follow(self, decision: PlanDecision) -> None:
        """Point each task at the variants ``decision`` chose (when its plan starts to run)."""
        first = len(self.workload.sessions) + len(self.workload.queries)
        for index, route in enumerate(self.task_routes):
            route.follow(decision.choice, first + index, decision.request.rates)

    def _served(self, cls_index: int, deadlines: np.ndarray, tags: np.ndarray, finish_ms: float) -> None:
        cls = self.classes[cls_index]
        reply = finish_ms + (cls.post_ms if self.overlap else 0.0)
        if cls.query < 0:
            if self.exact:
                # The server's verdict (finish vs its deadline) for the outcome log; the client's (its own
                # send to the reply's return) for the figures.
                ids = (tags >> CLASS_BITS) - 1
                if self.config.log_batches:
                    self.requests.outcome[ids] = np.where(deadlines < reply, OUTCOME_LATE, OUTCOME_GOOD)
                if self.cpu is not None:
                    self._reply_path(ids, reply)
                    return
                sends = self.requests.send_ms[ids]
                order = np.argsort(sends, kind="stable")
                latency = reply + self.config.network_ms - sends[order]
                self.metrics.add_served(cls.source, sends[order], latency, latency > cls.slo_ms)
                return
            # One session's requests in deadline order: the late ones come first.
            sends = deadlines - cls.slo_ms
            late_count = int(deadlines.searchsorted(reply, side="left"))
            self.metrics.add_served_sorted(cls.source, sends, reply - sends, late_count)
            return
        late = deadlines < reply
        self.stage_served[cls_index] += len(tags)
        self.stage_late[cls_index] += int(np.count_nonzero(late))
        qids = (tags >> CLASS_BITS) - 1
        table = self.requests
        np.maximum.at(table.last_reply_ms, qids, reply)
        spawned = np.zeros(len(qids), dtype=np.int64)
        for child_index, gamma in cls.children:
            counts = self.fanout_rng.poisson(gamma, len(qids))
            total = int(counts.sum())
            if total == 0:
                continue
            spawned += counts
            child_qids = np.repeat(qids, counts)
            child = self.classes[child_index]
            arrival = reply + self.config.network_ms + (child.pre_ms if self.overlap else 0.0)
            child_deadlines = table.send_ms[child_qids] + self.stage_deadline_offset_ms[child_index]
            order = np.argsort(child_deadlines, kind="stable")
            child_tags = ((child_qids[order] + 1) << CLASS_BITS) | child_index
            self._route(child_index, np.full(total, arrival), child_deadlines[order], child_tags)
        self._settle_queries(qids, spawned - 1)

    def _send_times(self, deadlines: np.ndarray, tags: np.ndarray) -> list[float]:
        out = []
        for deadline, tag in zip(deadlines.tolist(), tags.tolist(), strict=True):
            cls = self.classes[tag & CLASS_MASK]
            request = (tag >> CLASS_BITS) - 1
            out.append(deadline - cls.slo_ms if request < 0 else float(self.requests.send_ms[request]))
        return out

    def _dropped(self, deadlines: np.ndarray, tags: np.ndarray) -> None:
        if len(tags) == 0:
            return
        if self.config.log_batches:
            self.batch_log.append(("drop", self.engine.now_ms, self._send_times(deadlines, tags)))
        classes = tags & CLASS_MASK
        first = int(classes[0])
        single = classes[-1] == first and (len(classes) < 3 or bool((classes == first).all()))
        for cls_index in [first] if single else np.unique(classes).tolist():
            mask = slice(None) if single else classes == cls_index
            cls = self.classes[cls_index]
            if cls.query < 0:
                if self.exact:
                    ids = (tags[mask] >> CLASS_BITS) - 1
                    if self.config.log_batches:
                        self.requests.outcome[ids] = OUTCOME_DROPPED
                    if self.cpu is not None:
                        self.requests.failed[ids] = True
                        self._reply_path(ids, self.engine.now_ms)
                        continue
                    self.metrics.add_dropped(cls.source, np.sort(self.requests.send_ms[ids]))
                else:
                    self.metrics.add_dropped(cls.source, deadlines[mask] - cls.slo_ms)
                continue
            qids = (tags[mask] >> CLASS_BITS) - 1
            self.stage_dropped[cls_index] += len(qids)
            self.requests.failed[qids] = True
            self._settle_queries(qids, np.full(len(qids), -1, dtype=np.int64))

    def _settle_queries(self, qids: np.ndarray, change: np.ndarray) -> None:
        """Apply each stage request's change to its query's outstanding count; finish queries at zero."""
        table = self.requests
        np.add.at(table.outstanding, qids, change)
        done = qids[table.outstanding[qids] == 0]
        if len(done) == 0:
            return
        done = np.unique(done)
        table.outstanding[done] = -1  # finished: never counted twice
        for source in np.unique(table.source[done]).tolist():
            ids = done[table.source[done] == source]
            sends = table.send_ms[ids]
            failed = table.failed[ids]
            if failed.any():
                self.metrics.add_dropped(source, sends[failed])
            served = ids[~failed]
            if len(served):
                latency = table.last_reply_ms[served] - table.send_ms[served]
                order = np.argsort(table.send_ms[served], kind="stable")
                late = latency > table.slo_ms[served] + 1e-9
                self.metrics.add_served(source, table.send_ms[served][order], latency[order], late[order])

    # ------------------------------------------------------------------------------ arrivals
    def _arrivals(self, start_ms: float) -> None:
        end = min(start_ms + self.config.chunk_ms, self.end_ms)
        self._begin_chunk()
        for source, stream in enumerate(self.streams):
            self._send(source, stream.until(end), None, None)
        self._end_chunk()
        if end < self.end_ms:
            self.engine.schedule(end, PRIORITY_ARRIVALS, self._arrivals, end)

    def _replay(self, start_ms: float) -> None:
        """The next chunk of an explicit trace."""
        trace = self.config.trace
        assert trace is not None
        end = min(start_ms + self.config.chunk_ms, self.end_ms)
        first, stop = np.searchsorted(trace.send_ms, [start_ms, end], side="left").tolist()
        self._begin_chunk()
        if stop > first:
            sources = trace.source[first:stop]
            for source in np.unique(sources).tolist():
                picked = np.flatnonzero(sources == source) + first
                rows = trace.rows[picked] if trace.rows is not None else None
                priority = trace.priority[picked] if trace.priority is not None else None
                self._send(int(source), trace.send_ms[picked], rows, priority, picked)
        self._end_chunk()
        if end < self.end_ms:
            self.engine.schedule(end, PRIORITY_ARRIVALS, self._replay, end)

    def _begin_chunk(self) -> None:
        if self.host is not None and not self.exact:
            self._collecting = {}
        self._door: list[tuple[np.ndarray, ...]] = []

    def _end_chunk(self) -> None:
        if self._collecting is not None:
            self._host_flush()
        if self._door:  # the generator sends in time order, whichever model a request is for
            sends, tags, rows, priority = (np.concatenate(column) for column in zip(*self._door, strict=True))
            self._door = []
            for index in np.argsort(sends, kind="stable").tolist():
                self._to_door(float(sends[index]), int(tags[index]), int(rows[index]), int(priority[index]))

    def _send(
        self,
        source: int,
        sends: np.ndarray,
        rows: np.ndarray | None,
        priority: np.ndarray | None,
        origin: np.ndarray | None = None,
    ) -> None:
        """New requests from a source: recorded as sent, counted for the control loop, on their way."""
        if len(sends) == 0:
            return
        self.metrics.add_sent(source, sends)
        network = self.config.network_ms
        n_sessions = len(self.workload.sessions)
        n_plain = n_sessions + len(self.workload.queries)
        if n_sessions <= source < n_plain:
            q_index = source - n_sessions
            query = self.workload.queries[q_index]
            qids = self.requests.new(source, sends, query.slo_ms)
            root = self.classes[self.root_class[q_index]]
            arrivals = sends + (network + self._pre_on_arrival(root))
            if self.control is not None:
                self.control.record_times(source, arrivals / 1000.0)
            tags = ((qids + 1) << CLASS_BITS) | root.index
            self._route(root.index, arrivals, sends + self.stage_deadline_offset_ms[root.index], tags)
            return
        cls = self.classes[source if source < n_sessions else self.task_entry_class[source - n_plain]]
        count = len(sends)
        if not self.exact:
            arrivals = sends + (network + self._pre_on_arrival(cls))
            if self.control is not None:
                self.control.record_times(source, arrivals / 1000.0)
            self._route(cls.index, arrivals, sends + cls.slo_ms, np.full(count, cls.index, dtype=np.int64))
            return
        ids = self.requests.new(source, sends, cls.slo_ms)
        if origin is not None:
            self.requests.origin[ids] = origin
        tags = ((ids + 1) << CLASS_BITS) | cls.index
        rows = rows if rows is not None else np.ones(count, dtype=np.int64)
        priority = priority if priority is not None else np.zeros(count, dtype=np.int64)
        if self.cpu is not None:  # through the load generator and the event loop, on the machine's cores
            self._door.append((sends, tags, rows, priority))
            return
        arrivals = sends + (network + self._pre_on_arrival(cls))
        if self.control is not None:
            self.control.record_times(source, arrivals / 1000.0)
        self._exact.add(arrivals, arrivals + cls.slo_ms, tags, rows, priority)
        self._schedule_cursor()

    def _pre_on_arrival(self, cls: RequestClass) -> float:
        """Delay before a new request joins a device queue when the host is not modelled: its
        pre-processing, when the system overlaps it (with a host model, the pool adds it)."""
        if self.host is not None or not self.overlap:
            return 0.0
        return cls.pre_ms

    # ------------------------------------------------------------------- one machine's CPU (twin)
    def _to_door(self, send_ms: float, tag: int, rows: int, priority: int) -> None:
        """A request leaves the load generator (its CPU) and is handled by the server's event loop."""
        assert self.cpu is not None and self.host is not None
        arrive = send_ms
        if self.generator_thread is not None:
            self.cpu.submit(
                self.generator_thread,
                self.host.costs_for(self.classes[tag & CLASS_MASK].model).generator_send_ms,
                self._at_door,
                tag,
                rows,
                priority,
                release_ms=send_ms,
            )
            return
        del arrive
        self.engine.schedule(max(send_ms, self.engine.now_ms), PRIORITY_ARRIVALS, self._at_door, tag, rows, priority)

    def _at_door(self, tag: int, rows: int, priority: int) -> None:
        assert self.cpu is not None and self.host is not None
        self.cpu.submit(
            self.loop_thread,
            self.host.costs_for(self.classes[tag & CLASS_MASK].model).frontend_ms,
            self._handled,
            tag,
            rows,
            priority,
            release_ms=self.engine.now_ms + self.config.network_ms,
            on_start=self._stamp,
            gil=True,
        )

    def _stamp(self, tag: int, rows: int, priority: int) -> None:
        """The server's handler starts: the arrival time its deadline counts from."""
        request = (tag >> CLASS_BITS) - 1
        self.requests.arrival_ms[request] = self.engine.now_ms
        if self.control is not None:
            self.control.record(tag & CLASS_MASK, self.engine.now_ms / 1000.0)

    def _handled(self, tag: int, rows: int, priority: int) -> None:
        request = (tag >> CLASS_BITS) - 1
        stamp = float(self.requests.arrival_ms[request])
        cls = self.classes[tag & CLASS_MASK]
        self._admit(stamp + cls.slo_ms, stamp, tag, rows, priority)

    def _reply_path(self, ids: np.ndarray, server_done_ms: float) -> None:
        """Replies go back through the event loop and the load generator; the client's clock decides."""
        assert self.cpu is not None and self.host is not None
        for request in ids.tolist():
            model = self.classes[int(self.requests.source[request])].model
            self.cpu.submit(self.loop_thread, self.host.costs_for(model).reply_ms, self._replied, request, gil=True)

    def _replied(self, request: int) -> None:
        assert self.cpu is not None and self.host is not None
        if self.generator_thread is not None:
            model = self.classes[int(self.requests.source[request])].model
            receive = self.host.costs_for(model).generator_receive_ms
            self.cpu.submit(self.generator_thread, receive, self._received, request)
        else:
            self._received(request)

    def _received(self, request: int) -> None:
        source = int(self.requests.source[request])
        send = float(self.requests.send_ms[request])
        latency = self.engine.now_ms + self.config.network_ms - send
        sends = np.array([send])
        if self.requests.failed[request]:
            self.metrics.add_dropped(source, sends)
        else:
            self.metrics.add_served(
                source, sends, np.array([latency]), np.array([latency > self.requests.slo_ms[request]])
            )

    # ------------------------------------------------------------------------------- control
    def _tick(self, time_ms: float) -> None:
        in_use = set(self.assignment.slots)
        if self.pending_plan is not None:
            in_use |= {b.backend_id for b in self.pending_plan.backends}
        self.backend_series.append(len(in_use))
        busy = self._busy_total_ms - self._busy_at_tick_ms
        self._busy_at_tick_ms = self._busy_total_ms
        width = self.config.tick_ms
        self.utilization_series.append(round(busy / (len(in_use) * width), 6) if in_use else 0.0)
        if self._bad_limit is not None:
            bad = int(self.metrics.late.sum() + self.metrics.dropped.sum())
            if bad > self._bad_limit:
                self.stopped_early = True
                self.engine.stop()
                return
        if time_ms + width <= self.end_ms:
            self.engine.schedule(time_ms + width, PRIORITY_CONTROL, self._tick, time_ms + width)

    def _control(self, time_ms: float) -> None:
        control = self.control
        assert control is not None and self.config.control is not None
        if self.pending_plan is None:
            request = control.decide(time_ms / 1000.0, range(len(self.base_rates)))
            if request is not None:
                decision = control.plan_for(request)
                if control.worth_installing(decision):
                    self._replan(decision)
                else:
                    control.skip(decision)
        step = self.config.control.tick_s * 1000.0
        if time_ms + step <= self.end_ms:
            self.engine.schedule(time_ms + step, PRIORITY_CONTROL, self._control, time_ms + step)

    def _replan(self, decision: PlanDecision) -> None:
        assert self.control is not None and self.plan is not None
        now = self.engine.now_ms
        moved, added, released = plan_changes(self.plan, decision.plan)
        self.control.installed(decision)
        delay = self.config.model_load_ms if (moved or added) else 0.0
        devices = len({b.backend_id for b in self.plan.backends} | {b.backend_id for b in decision.plan.backends})
        capacity = self.control.capacity
        if delay and capacity is not None and devices > capacity:
            # Make before break needs devices the cluster does not have: switch now, and the added
            # backends load their models before they run anything (requests queue meanwhile).
            self._loading_until_ms = now + delay
            delay = 0.0
        self.replans.append(
            {
                "time_s": round(now / 1000.0, 3),
                "reason": str(decision.request.reason),
                "backends": decision.plan.num_backends,
                "headroom": round(decision.headroom, 4),
                "moved": moved,
                "added": added,
                "released": released,
                "lower_bound": round(decision.plan.lower_bound, 3),
            }
        )
        if decision.choice is not None and decision.choice.delivered_accuracy is not None:
            self.replans[-1]["planned_accuracy"] = round(decision.choice.delivered_accuracy, 6)
        self.pending_plan = decision.plan
        self.engine.schedule(now + delay, PRIORITY_SWITCH, self._switch, decision.plan, decision)

    def _switch(self, plan: Plan, decision: PlanDecision | None = None) -> None:
        self.pending_plan = None
        before = set(self.backends)
        if decision is not None:
            self._follow(decision)
        self._install(plan)
        loading_until = self._loading_until_ms
        self._loading_until_ms = None
        if loading_until is None:
            return
        for backend_id, backend in self.backends.items():
            if backend_id not in before and backend.inflight is None:
                backend.turn.busy = True  # loading its models: takes no turn until loaded
                backend.loading = True
                self.engine.schedule(loading_until, PRIORITY_SWITCH, self._loaded, backend)

    def _loaded(self, backend: SimBackend) -> None:
        backend.turn.busy = False
        backend.loading = False
        if backend.node is not None and not backend.retired:
            self._settle(backend.node, backend)

    # ---------------------------------------------------------------------------------- run
    def run(self) -> SimResult:
        plan = self._initial_plan
        if self.control is not None:
            if plan is None:
                request = self.control.request(0.0, range(len(self.base_rates)), "start")
                decision = self.control.plan_for(request)
                self.control.installed(decision)
                self._follow(decision)
                plan = decision.plan
            else:
                initial = self.base_rates * self.config.scale * self.config.rate_schedule.factor_at(0.0)
                rates = {i: float(r) for i, r in enumerate(initial)}
                self.control.estimator.seed(rates)
                headroom = self.config.control.max_headroom if self.config.control else 1.0
                self.control.installed(PlanDecision(_start_request(rates), plan, headroom, True))
        if plan is None:
            raise ValueError("a simulation without a control loop needs a plan")
        self._install(plan)
        if self.config.trace is not None:
            self.engine.schedule(0.0, PRIORITY_ARRIVALS, self._replay, 0.0)
        else:
            self.engine.schedule(0.0, PRIORITY_ARRIVALS, self._arrivals, 0.0)
        self.engine.schedule(self.config.tick_ms, PRIORITY_CONTROL, self._tick, self.config.tick_ms)
        if self.control is not None and self.config.control is not None:
            step = self.config.control.tick_s * 1000.0
            self.engine.schedule(step, PRIORITY_CONTROL, self._control, step)
        self.engine.run()
        return self.result()

    def _task_summary(self) -> dict[str, dict[str, Any]]:
        """Per task: what each variant answered in time, what fell back, what was shed, and the delivered
        accuracy (expected correct answers within the deadline / requests sent, after the warm-up)."""
        out: dict[str, dict[str, Any]] = {}
        first = len(self.workload.sessions) + len(self.workload.queries)
        for index, task in enumerate(self.tasks):
            sent = int(self.metrics.sent[first + index])
            on_time = self.variant_on_time[index]
            accuracy = {v.model: v.accuracy for v in task.variants}
            correct = sum(accuracy[model] * count for model, count in on_time.items())
            out[task.name] = {
                "sent": sent,
                "answered_in_time": dict(on_time),
                "fell_back": dict(self.variant_fell_back[index]),
                "shed": self.task_shed[index],
                "delivered_accuracy": round(correct / sent, 6) if sent else None,
            }
        return out

    def result(self) -> SimResult:
        metrics = self.metrics
        overall = metrics.totals()
        stages = {}
        for cls in self.classes:
            if cls.query >= 0:
                stages[f"{self.workload.queries[cls.query].name}/{cls.stage_name}"] = {
                    "served": int(self.stage_served[cls.index]),
                    "late_vs_stage_deadline": int(self.stage_late[cls.index]),
                    "dropped": int(self.stage_dropped[cls.index]),
                }
        offered = float(self.base_rates.sum() * self.config.scale)
        first_plan = self._initial_plan
        summary = {
            "system": self.system.name,
            "scale": self.config.scale,
            "offered_rate": round(offered, 6),
            "overall": overall,
            "sessions": metrics.per_source(),
            "query_stages": stages,
            "tasks": self._task_summary(),
            "backends_initial": first_plan.num_backends if first_plan is not None and not self.replans else None,
            "requests_resolved": metrics.served_total,
            "stopped_early": self.stopped_early,
            "events": self.engine.events_run,
        }
        return SimResult(summary=summary, metrics=self)


def _variant_sessions(
    tasks: Sequence[Task], workload: Workload, profiles: Mapping[str, Profile], config: SimConfig, plan: Plan | None
) -> dict[str, Session]:
    """Each task's variant models as sessions the planner may pack (at the rates the chooser gives)."""
    if not tasks:
        return {}
    if config.control is None or plan is not None:
        raise ValueError("tasks need the control loop to choose their variants (config.control, and no plan)")
    if workload.queries:
        raise ValueError("a simulation with tasks cannot also run queries")
    plain = {s.model for s in workload.sessions}
    sessions: dict[str, Session] = {}
    for task in tasks:
        for variant in task.variants:
            if variant.model in plain or variant.model in sessions:
                raise ValueError(f"variant {variant.model!r} of task {task.name!r} is also another session's model")
            if variant.model not in profiles:
                raise ValueError(f"variant {variant.model!r} of task {task.name!r} has no profile")
            sessions[variant.model] = Session(variant.model, task.slo_ms, 0.0)
    return sessions


def _nothing() -> None:
    return None


def _start_request(rates: dict[Hashable, float]) -> PlanRequest:
    return PlanRequest("start", 0.0, rates)


def plan_changes(old: Plan, new: Plan) -> tuple[int, int, int]:
    """(sessions placed on a backend they were not on, backends added, backends released)."""
    before = {(b.backend_id, a.key) for b in old.backends for a in b.allocations}
    after = {(b.backend_id, a.key) for b in new.backends for a in b.allocations}
    old_ids = {b.backend_id for b in old.backends}
    new_ids = {b.backend_id for b in new.backends}
    return len(after - before), len(new_ids - old_ids), len(old_ids - new_ids)


@dataclass
class SimResult:
    summary: dict[str, Any]
    metrics: Simulation

    @property
    def good_rate(self) -> float:
        return float(self.summary["overall"]["good_rate"])


def _table(profile: Profile, size: int) -> np.ndarray:
    """ℓ(n) for n = 0..size, n padded to the next allowed batch (index 0 is 0)."""
    out = np.zeros(size + 1)
    for n in range(1, size + 1):
        out[n] = profile.batch_latency_ms(n)
    return out


def _std_table(profile: Profile, size: int) -> np.ndarray:
    out = np.zeros(size + 1)
    if profile.std_ms:
        for n in range(1, size + 1):
            batch = profile.smallest_allowed_at_least(n)
            out[n] = profile.std(batch if batch is not None else n)
    return out

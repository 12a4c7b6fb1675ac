"""The serving core: admission, plan installation, and the callbacks that answer requests.

``ServingCore`` implements the frontend's ``ModelService``. Each ready model version is a session
(model, SLO), profiled on this machine. Everything between "rates measured" and "batch dispatched" is
the engine the simulator runs too:
- the control loop (``squishy.control``) measures each session's rate, decides when to re-plan and
  fits the plan to the machine's execution slots (up to 2× the measured load while slots are spare,
  the share that fits when they are not);
- ``squishy.cluster.assign`` places the plan on the slots (batch limits, routing weights, steal budgets);
- ``squishy.routing`` picks a request's slot (deficit round robin on the plan's rates, the shorter
  backlog where queues are in sight);
- ``squishy.batching`` queues it (early drop) and each slot's worker takes the backend's turns.
A new plan moves queued requests with their session; batches in flight finish where they are, so no
accepted request is lost or answered twice. Time comes from the ``Clock`` passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from squishy.batching import DropPolicy, Item, SessionQueue
from squishy.batching.latency import LatencyModel, prefix_group_table
from squishy.batching.turn import Machine, Slot, declare_fallbacks
from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.cluster import SlotLayout, slot_layout
from squishy.cluster.assign import Assignment, assign
from squishy.control import ControlConfig, ControlLoop, PlanDecision, PlanRequest
from squishy.control.variants import CHOICE_LOAD_MARGIN, VariantChooser, observed_profile, slowdown_factor
from squishy.errors import InfeasibleError, SquishyError, WorkloadError
from squishy.metrics import ServerMetrics
from squishy.profiles import Profile
from squishy.routing import DeficitRoundRobin, pick_by_backlog
from squishy.runtime.api import (
    InferRequest,
    InferResponse,
    InternalError,
    InvalidRequestError,
    ModelNotReadyError,
    ModelSpec,
    ModelState,
    ModelStatistics,
    UnavailableError,
)
from squishy.runtime.application import PLATFORM_APPLICATION, Application, ApplicationLoadError
from squishy.runtime.backend import BatchSink, BatchTiming, RunningBatch, SessionWork, Worker
from squishy.runtime.calls import check_call_inputs
from squishy.runtime.composite import CallStage, application_tree, below_ms, ensemble_tree
from squishy.runtime.ensemble import PLATFORM_ENSEMBLE, Ensemble, EnsembleStep, run_ensemble
from squishy.runtime.executors import Executor, SlotLostError, make_executor
from squishy.runtime.prefix import (
    PrefixCut,
    PrefixError,
    PrefixExecutor,
    cut_model,
    group_cuts,
    head_profile,
    prefix_tensor,
)
from squishy.runtime.repository import PLATFORM_VARIANTS, ModelLoadError, ModelRepository
from squishy.runtime.stats import StatisticsBook
from squishy.runtime.tasks import ServedTask, VariantSession, scheduler_task, task_problem
from squishy.runtime.watchdog import HangBound, HangSink, Watchdog
from squishy.scheduler import Allocation, Plan, PrefixGroup, Session, SessionKey, Settings, Workload, make_plan
from squishy.scheduler.demand import allocation_profile, head_key, scheduled_profile
from squishy.scheduler.queries import split_tree
from squishy.scheduler.replan import replan
from squishy.scheduler.variants import Task

logger = logging.getLogger(__name__)

# Headroom: plan for up to this multiple of the measured load when slots are spare. Planning for much
# more would reshape the plan around load that is not there (e.g. a costly model's rate inflated onto
# the slot that serves tight-SLO models); spare time beyond it is used by work stealing instead.
DEFAULT_MAX_HEADROOM = 2.0

Reply = Callable[[InferResponse | BaseException], None]
_Runner = Callable[[InferRequest, float], Awaitable[InferResponse]]  # a composite model's answer, by a deadline
VARIANT_PARAMETER = "squishy_variant"  # response parameter: the variant model that answered a task's request


ExecutorFactory = Callable[[int, ModelSpec, str, int, Profile | None], Executor]


@dataclass(frozen=True)
class ServingConfig:
    layout: SlotLayout = field(default_factory=slot_layout)
    executor: str = "auto"  # auto | onnxruntime | torch | tvm | null | null-zero (no work at all)
    epoch_s: float = 10.0  # re-plan at least this often (Nexus: 30 s on a cluster)
    min_replan_interval_s: float = 2.0  # and early on a load change, but not more often than this
    control_tick_s: float = 0.5  # how often the control loop looks at the measured rates
    network_ms: float = 1.0  # taken off every SLO before packing: the request's path outside the executor
    profile_inflation: float = 1.1  # measured ℓ(b) × this: the executors share memory bandwidth
    min_rate_per_s: float = 1.0  # every ready model is provisioned at least this rate, so it has a backend
    max_headroom: float = DEFAULT_MAX_HEADROOM
    work_stealing: bool = True  # idle slots run batches of busy slots' sessions when their promises allow
    # Variants are chosen for the measured rates times this (``squishy.control.variants``).
    variant_load_margin: float = CHOICE_LOAD_MARGIN
    query_split: str = "dp"  # how a composite's SLO is split over its stages: dp (query analysis) | even
    prefix_batching: bool = True  # models that declare a shared trunk (prefix_tensor) run it once per batch
    strict_readiness: bool = True  # ready only when every model asked for is ready (Triton's default)
    # A request whose batch is still running at its deadline is answered then, with an error (False: late,
    # with its result, as Triton does).
    answer_at_deadline: bool = True
    hang: HangBound = field(default_factory=HangBound)  # when a slot's batch counts as hung
    profile_progress: bool = False
    # Where slots' executors run: None, in this process; else (slot, spec, kind, threads, profile) → an
    # executor on that slot's own process (``squishy.cluster.ray.RayBackends.executor``).
    executor_factory: ExecutorFactory | None = None

    def __post_init__(self) -> None:
        if self.query_split not in ("dp", "even"):
            raise WorkloadError(f"query split must be dp or even, got {self.query_split!r}")
        if not self.variant_load_margin >= 1.0:
            raise WorkloadError(f"variant load margin must be at least 1, got {self.variant_load_margin:g}")

    def control(self) -> ControlConfig:
        return ControlConfig(
            tick_s=self.control_tick_s,
            epoch_s=self.epoch_s,
            min_interval_s=self.min_replan_interval_s,
            max_headroom=self.max_headroom,
            min_rate_per_s=self.min_rate_per_s,
        )

    @property
    def settings(self) -> Settings:
        return Settings(network_ms=self.network_ms, profile_inflation=self.profile_inflation)


@dataclass
class _Session:
    session_id: str
    spec: ModelSpec
    profile: Profile  # the scheduler's profile (model = session id), interpolated over batch sizes
    priority_levels: int
    default_priority: int
    settings: Settings
    cut: PrefixCut | None = None  # the model cut at its prefix_tensor, when it declares one
    trunk_profile: Profile | None = None  # the trunk's ℓ(b), measured here, when it has a cut
    head_profile: Profile | None = None  # its head's own ℓ(b), when measured (``prefix_demand``)
    latency: LatencyModel = field(init=False)  # ℓ(n) for early drop, with the observed slowdown
    scheduled: Profile = field(init=False)  # the profile with the scheduler's margins

    _planning: tuple[float, Profile] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.latency = LatencyModel.from_profile(self.profile)
        self.scheduled = scheduled_profile(self.profile, self.settings)

    def planning_profile(self) -> Profile:
        """The profile variants are chosen with (``observed_profile``), kept while the slowdown holds."""
        factor = slowdown_factor(self.latency.slowdown, self.settings)
        if self._planning is None or self._planning[0] != factor:
            self._planning = (factor, observed_profile(self.profile, self.latency.slowdown, self.settings))
        return self._planning[1]


@dataclass
class _Trunk:
    """A prefix group (``squishy.runtime.prefix``): its trunk as a session of its own, planned with its
    members as one, and each member's head. The trunk's latency model follows the plan's mix."""

    session: _Session
    tensor: str  # where the trunk ends
    heads: dict[str, ModelSpec]  # member session id → the member's head


@dataclass
class _Pending:
    """What a queued request carries through the backend: who to answer and what the reply needs."""

    reply: Reply
    request: InferRequest
    spec: ModelSpec  # the model the client called: the task when a variant answers for it
    arrival_ms: float
    task: ServedTask | None = None
    routed: str = ""  # the session admission chose (a burst may move it to a cheaper variant)
    answered: bool = False  # set under the core's answer lock: the watchdog and the worker may both try
    retried: bool = False  # moved once already, off a slot that was lost


@dataclass
class _Prepared:
    """A plan ready to install: placed on the slots, every executor it needs created."""

    decision: PlanDecision
    assignment: Assignment


# Every epoch's split is put in force (the stages' SLOs and deadlines follow it), but the plan is made
# again for it only when some stage's budget moved by more than this share: the measured fan-out
# wobbles, and a re-plan costs.
SPLIT_HYSTERESIS = 0.05


@dataclass
class _Split:
    """A composite's SLO split in force: each stage's budget, its session, and what its calls leave."""

    budgets: dict[str, float]
    below: list[float]  # per stage index: the most time the stages under it take
    sessions: dict[int, str]  # stage index → the stage's session id
    step_stage: dict[int, int]  # an ensemble's steps (by id) → stage index
    model_stage: dict[str, int]  # an application's called models → stage index

    def route(self, index: int | None, request: InferRequest) -> None:
        """Point a composite's call at its stage's session, leaving the stages below it their time."""
        if index is None or index not in self.sessions:
            return
        request.stage = self.sessions[index]
        if request.timeout_us > 0:
            request.timeout_us = max(1, request.timeout_us - int(self.below[index] * 1000.0))


class _Planner:
    """The control loop's planner over the core's sessions (one session per model version)."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def _workload(self, rates: Mapping[Hashable, float]) -> Workload:
        sessions = self.core._sessions
        groups = []
        for sid, trunk in self.core._trunks.items():
            members = tuple(m for m in trunk.heads if m in rates)
            if len(members) >= 2:  # a trunk only one member uses is just that model
                groups.append(PrefixGroup(prefix=sid, models=members))
        return Workload(
            sessions=tuple(Session(str(sid), sessions[str(sid)].spec.slo_ms, rate) for sid, rate in rates.items()),
            prefix_groups=tuple(groups),
            settings=self.core.config.settings,
        )

    def _profiles(self) -> dict[str, Profile]:
        return self.core.planning_profiles()

    def fresh(self, rates: Mapping[Hashable, float]) -> Plan:
        return make_plan(self._workload(rates), self._profiles())

    def incremental(self, previous: Plan, rates: Mapping[Hashable, float]) -> Plan:
        return replan(previous, self._workload(rates), self._profiles()).plan


class ServingCore(BatchSink, HangSink):
    """The ``ModelService`` behind ``squishy serve``."""

    def __init__(
        self,
        repository: ModelRepository,
        config: ServingConfig | None = None,
        metrics: ServerMetrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.repository = repository
        self.config = config or ServingConfig()
        self.metrics = metrics or ServerMetrics()
        self.clock = clock
        self.stats = StatisticsBook(clock)
        self.control = ControlLoop(self.config.control(), _Planner(self), capacity=self.config.layout.slots)
        self._chooser = VariantChooser(
            tasks=self._scheduler_tasks,
            profiles=lambda: {sid: s.planning_profile() for sid, s in self._sessions.items()},
            slo_ms=lambda sid: self._sessions[sid].spec.slo_ms,
            settings=self.config.settings,
            load_margin=self.config.variant_load_margin,
        )
        # One lock for every worker on this machine: queue operations are short, and sharing it lets an
        # idle worker steal a batch from a busy one.
        self.lock = threading.Condition()
        self.watchdog = Watchdog(
            lambda: self.workers, self, clock, self.config.hang, answer_at_deadline=self.config.answer_at_deadline
        )
        self.workers = [Worker(i, self, self.lock, clock, watch=self.watchdog) for i in range(self.config.layout.slots)]
        self._answer_lock = threading.Lock()
        self.machine = Machine([w.turn for w in self.workers])
        self._sessions: dict[str, _Session] = {}
        self._tasks: dict[str, ServedTask] = {}  # task session id → a model whose variants answer for it
        self._ensembles: dict[str, Ensemble] = {}  # ensemble id → its steps (each an ordinary request)
        self._applications: dict[str, Application] = {}  # application id → its loaded module
        self._splits: dict[str, _Split] = {}  # composite id → its SLO split in force (query analysis)
        self._stage_of: dict[str, str] = {}  # a stage's session id → its composite's id
        self._splits_due_s = 0.0
        self._valid_tasks: dict[str, ServedTask] = {}  # the tasks every variant of which is ready
        self._unschedulable: dict[str, str] = {}  # model name → why no plan can meet its SLO here
        self._requested: set[str] = set()  # models asked to load (at start or through the API)
        self._retiring: set[str] = set()  # sessions a reload replaces: serving until the new plan is in
        self._executors: dict[tuple[int, str], Executor] = {}
        self._lost_slots: set[int] = set()  # slots whose process died (``slot_lost``): out of every plan
        self._stranded: list[tuple[str, Item]] = []  # requests of a lost slot waiting for the next plan
        self._rerouting: set[str] = set()  # sessions a lost slot left with no route until the re-plan
        # Session id → where its requests go (a prefix group's members each by their own rates in it).
        self._routers: dict[str, DeficitRoundRobin[int]] = {}
        self._trunks: dict[str, _Trunk] = {}  # a prefix group's session id → the group
        self._queue_session: dict[str, str] = {}  # a member of a planned prefix group → the group's session
        self._group_profiles: dict[tuple[Any, ...], Profile] = {}  # a group at a plan's mix → its profile
        self._assignment = Assignment({}, {})
        self._plan_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._threads = False
        self._started = False
        self.draining = False  # stopping: readiness is false so that load balancers move away (``drain``)
        self.requests_moved = 0  # queued requests that followed their session to another slot

    @property
    def plan(self) -> Plan | None:
        return self.control.plan

    @property
    def headroom(self) -> float:
        return self.control.headroom

    # --------------------------------------------------------------------------------- lifecycle
    async def start(self, run_threads: bool = True) -> None:
        """Load every model, profile it, plan, and start the backends and the control loop.

        ``run_threads`` False leaves the backends and the control loop to the caller, who drives them
        (``machine.settle``, ``control_step``) under its own clock: tests and replays.
        """
        self._loop = asyncio.get_running_loop()
        states = await asyncio.to_thread(self.repository.load_all)
        self._requested = {s.name for s in states}
        for spec in self.repository.ready_specs():
            await self._add_session(spec)
        self._threads = run_threads
        if run_threads:
            for worker in self.workers:
                worker.start()
            self.watchdog.start()
        await self.replan("start")
        self._started = True
        if run_threads:
            self._control_task = asyncio.create_task(self._control_loop(), name="squishy-control")

    async def stop(self) -> None:
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
        if self._threads:
            await asyncio.to_thread(self._stop_workers)
            await asyncio.to_thread(self.watchdog.stop)
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    # ------------------------------------------------------------------------- ModelService: state
    def is_live(self) -> bool:
        return True

    def drain(self) -> None:
        """Readiness turns false for good; requests that still arrive are served as before (a load
        balancer takes a moment to notice, and what it already sent must not be lost)."""
        self.draining = True

    def is_ready(self) -> bool:
        if not self._started or self.draining:
            return False
        if not self.config.strict_readiness:
            return bool(self._sessions)
        return all(self.model_ready(name) for name in self._requested)

    def repository_index(self, ready_only: bool = False) -> list[ModelState]:
        out = []
        for state in self.repository.index():
            reason = self._unschedulable.get(state.name)
            ensemble = self._ensembles.get(f"{state.name}:{state.version}")
            if reason is None and ensemble is not None:
                reason = self._ensemble_problem(ensemble, set())
            if reason is not None and state.state == "READY":
                state = ModelState(state.name, state.version, "UNAVAILABLE", reason)
            if not ready_only or state.state == "READY":
                out.append(state)
        return out

    def model_spec(self, name: str, version: str | None = None) -> ModelSpec:
        spec = self.repository.spec(name, version)
        reason = self._unschedulable.get(name)
        if reason is not None:
            raise ModelNotReadyError(f"model {name!r} is not ready: {reason}")
        return spec

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            spec = self.model_spec(name, version)
        except SquishyError:
            return False
        sid = session_id(spec)
        ensemble = self._ensembles.get(sid)
        if ensemble is not None:
            return self._ensemble_problem(ensemble, set()) is None
        if sid in self._applications:
            return True  # what it calls is known only when it calls: each call says if it is not ready
        task = self._valid_tasks.get(sid)
        if task is not None:
            return task.route in self._routers
        # A variant only its tasks call is planned once one of them chooses it (or traffic names it).
        return sid in self._routers or (sid in self._sessions and spec.name in self._variant_models())

    def alone_ms(self, spec: ModelSpec) -> float:
        """How long one request of ``spec`` takes run alone here (its profiled ℓ(1), with the observed
        slowdown): the least time a request still needs. 0 for a model with no session. A task's is its
        chosen variant's."""
        sid = session_id(spec)
        task = self._valid_tasks.get(sid)
        session = self._sessions.get(str(task.route) if task is not None and task.route is not None else sid)
        return session.latency.latency_ms(1) if session is not None else 0.0

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        return self.stats.snapshot(name, version)

    # ------------------------------------------------------------------------------- admission
    async def infer(self, request: InferRequest) -> InferResponse:
        assert self._loop is not None
        name = request.model_name
        # Only a composite's own requests look their spec up here; every other request's is in submit.
        if any(c.spec.name == name for table in (self._ensembles, self._applications) for c in table.values()):
            spec = self.model_spec(request.model_name, request.model_version)
            ensemble = self._ensembles.get(session_id(spec))
            if ensemble is not None:
                return await self._infer_composite(spec, request, self._ensemble_runner(ensemble))
            application = self._applications.get(session_id(spec))
            if application is not None:
                return await self._infer_composite(spec, request, self._application_runner(application))
        future: asyncio.Future[InferResponse] = self._loop.create_future()
        self.submit(request, _future_reply(self._loop, future))
        return await future

    def submit(self, request: InferRequest, reply: Reply) -> int:
        """Route and queue a request; ``reply`` is called once with its response or its error (from a
        worker thread). Returns the slot it was queued on (-1: it waits for the re-plan after its slot was
        lost). Raises at once, answering nothing, when the request is invalid, its model not scheduled, or
        it cannot finish within its deadline."""
        spec = self.model_spec(request.model_name, request.model_version)
        sid = session_id(spec)
        now_ms = self.clock.now_ms()
        task = self._tasks.get(sid)
        if task is not None:
            # The task's rate is what the chooser plans for, so it is counted before any rejection.
            self.control.record(sid, now_ms / 1000.0)
            sid = self._admit_task(task, spec)
        counted = task is not None
        if request.stage and not counted and request.stage in self._sessions:
            # A composite's call: counted for its stage's session, so that the plan provisions it; served
            # by it once the plan has it, by the model's own session until then.
            self.control.record(request.stage, now_ms / 1000.0)
            counted = True
            if request.stage in self._routers:
                sid = request.stage
        router = self._routers.get(sid)
        if router is None and task is None and not request.model_version:
            serving = self._serving_version(spec.name)  # a reload's new version is not planned yet
            if serving is not None:
                sid, spec = serving, self._sessions[serving].spec
                router = self._routers.get(sid)
        session = self._sessions.get(sid)
        if (router is None and sid not in self._rerouting) or session is None:
            if not counted and session is not None:
                self.control.record(sid, now_ms / 1000.0)  # traffic for a variant no task chose plans it
            raise self._not_scheduled(spec)
        arrival_ms = request.arrival_ms or now_ms
        budget_ms = spec.slo_ms
        if sid in self._stage_of and request.timeout_us > 0:
            # A stage's call may take what its composite's deadline leaves after the stages below it:
            # time an earlier stage did not use carries to this one.
            budget_ms = request.timeout_us / 1000.0
        elif request.timeout_us > 0:
            budget_ms = min(budget_ms, request.timeout_us / 1000.0)
        if not counted:
            self.control.record(sid, now_ms / 1000.0)
        item = Item(
            deadline_ms=arrival_ms + budget_ms,
            arrival_ms=arrival_ms,
            size=request.batch_size if spec.max_batch_size > 0 else 1,
            priority=self._priority_level(session, request.priority),
            payload=_Pending(reply, request, spec, arrival_ms, task, sid),
        )
        with self.lock:
            router = self._routers.get(sid)  # again: a new plan or the watchdog may have changed it
            if router is None and sid in self._rerouting:
                item.payload.retried = True  # its slot was lost a moment ago: it waits for the re-plan
                self._stranded.append((sid, item))
                return -1
            if router is None:
                raise self._not_scheduled(spec)
            target = self._queue(sid, router, item, now_ms)
        if target is None:
            self._count_dropped(spec, [item])
            alone_ms = session.latency.latency_ms(item.size)
            raise UnavailableError(
                f"model {spec.name!r}: the request cannot finish within its {budget_ms:g} ms deadline "
                f"(running it alone takes {alone_ms:.1f} ms here)"
            )
        return target

    async def _infer_composite(self, spec: ModelSpec, request: InferRequest, runner: _Runner) -> InferResponse:
        """A model made of calls to models (an ensemble, an application): one end-to-end deadline, the
        same statistics and metrics as any model."""
        now_ms = self.clock.now_ms()
        self.control.record(session_id(spec), now_ms / 1000.0)  # query analysis splits for this rate
        arrival_ms = request.arrival_ms or now_ms
        budget_ms = spec.slo_ms if request.timeout_us <= 0 else min(spec.slo_ms, request.timeout_us / 1000.0)
        deadline_ms = arrival_ms + budget_ms
        try:
            response = await runner(request, deadline_ms)
        except BaseException:
            self.stats.record_failure(spec.name, spec.version, round((self.clock.now_ms() - arrival_ms) * 1e6))
            self.metrics.record_request(spec.name, spec.version, "failed")
            raise
        finish_ms = self.clock.now_ms()
        self.stats.record_success(spec.name, spec.version, round((finish_ms - arrival_ms) * 1e6))
        met = "met" if finish_ms <= deadline_ms else "late"
        self.metrics.record_request(spec.name, spec.version, met, finish_ms - arrival_ms)
        return response

    def _ensemble_runner(self, ensemble: Ensemble) -> _Runner:
        spec = ensemble.spec
        outputs = [t.name for t in spec.outputs]

        async def step(step: EnsembleStep, request: InferRequest) -> InferResponse:
            called = self.model_spec(step.model, step.version or None)
            check_call_inputs(called, request.inputs, f"ensemble {spec.name!r}, step {step.label}")
            split = self._splits.get(session_id(spec))
            if split is not None:
                split.route(split.step_stage.get(id(step)), request)
            return await self.infer(request)

        def run(request: InferRequest, deadline_ms: float) -> Awaitable[InferResponse]:
            return run_ensemble(
                spec.name, spec.version, ensemble.steps, outputs, request, deadline_ms, step, self.clock.now_ms
            )

        return run

    def _application_runner(self, application: Application) -> _Runner:
        where = f"application {application.spec.name!r}"

        async def call(request: InferRequest) -> InferResponse:
            called = self.model_spec(request.model_name, request.model_version)
            check_call_inputs(called, request.inputs, f"{where}, call to {request.model_name!r}")
            split = self._splits.get(session_id(application.spec))
            if split is not None:
                split.route(split.model_stage.get(request.model_name), request)
            return await self.infer(request)

        def run(request: InferRequest, deadline_ms: float) -> Awaitable[InferResponse]:
            return application.run(request, deadline_ms, call, self.clock.now_ms)

        return run

    def _ensemble_problem(self, ensemble: Ensemble, seen: set[str]) -> str | None:
        """Why an ensemble cannot serve now (a step's model is not ready), or None."""
        seen = seen | {ensemble.spec.name}
        for step in ensemble.steps:
            if step.model in seen:
                return f"step {step.label} calls back into ensemble {step.model!r}"
            try:
                spec = self.model_spec(step.model, step.version or None)
            except SquishyError as exc:
                return f"step {step.label}: {exc}"
            inner = self._ensembles.get(session_id(spec))
            problem = self._ensemble_problem(inner, seen) if inner is not None else None
            if problem is not None:
                return f"step {step.label}: {problem}"
            if inner is None and not self.model_ready(step.model, step.version or None):
                return f"step {step.label}: model {step.model!r} is not ready"
        return None

    def _not_scheduled(self, spec: ModelSpec) -> UnavailableError:
        reason = self._unschedulable.get(spec.name)
        if reason is not None:
            return UnavailableError(f"model {spec.name!r} is unavailable: {reason}")
        if not self.repository.is_ready(spec.name, spec.version):
            return UnavailableError(f"model {spec.name!r} version {spec.version} was unloaded")
        return UnavailableError(f"model {spec.name!r} version {spec.version} is not scheduled yet; retry shortly")

    def _serving_version(self, name: str) -> str | None:
        """The newest version of model ``name`` that has slots now (the one a reload is replacing)."""
        serving = [
            sid
            for sid, s in self._sessions.items()
            if s.spec.name == name and sid in self._routers and sid not in self._stage_of
        ]
        return max(serving, key=lambda sid: int(self._sessions[sid].spec.version), default=None)

    def _admit_task(self, task: ServedTask, spec: ModelSpec) -> str:
        """The session that answers a task's request, or an error when the plan serves only part of the
        task's load (requests beyond it are rejected at once, never queued)."""
        route = task.route
        if route is None:
            raise UnavailableError(f"model {spec.name!r} version {spec.version} is not scheduled yet; retry shortly")
        if not task.admit():
            self._count_shed(spec, "capacity")
            floor = f" at or above its accuracy_floor {task.floor:g}" if task.floor > 0 else ""
            raise UnavailableError(
                f"model {spec.name!r}: request shed, the load exceeds what its cheapest variant{floor} can serve "
                f"here ({task.share:.0%} of requests admitted)"
            )
        target = str(task.target() or route)
        self.metrics.record_variant(spec.name, self._sessions[target].spec.name)
        return target

    def _queue(self, sid: str, router: DeficitRoundRobin[int], item: Item, now_ms: float) -> int | None:
        """Under the lock: the slot for ``item`` and whether it was queued (None: hopeless already)."""
        turns = self.machine.backends
        sid = self._queue_session.get(sid, sid)  # a prefix group's member queues with its group
        target = pick_by_backlog(router, lambda slot: turns[slot].backlog(sid))
        slot = turns[target].slot(sid)
        assert slot is not None, f"session {sid} routed to slot {target}, which does not run it"
        if not slot.queue.admit(item, now_ms):
            return None
        self.lock.notify_all()  # the owner, or an idle neighbour that may steal it
        return target

    def _priority_level(self, session: _Session, priority: int) -> int:
        if session.priority_levels <= 0:
            return 0  # as in Triton: without priority levels configured, priority is ignored
        level = priority or session.default_priority
        if level > session.priority_levels:
            raise InvalidRequestError(
                f"priority {priority} exceeds the {session.priority_levels} priority levels of model "
                f"{session.spec.name!r}"
            )
        return level

    # ------------------------------------------------------------------ ModelService: repository
    async def load_model(self, name: str, config_override: str | None = None) -> None:
        """(Re)load a model under load, losing no request: the new versions are profiled while the old
        ones serve; requests that name no version keep going to the old ones until the plan with the new
        ones is in; then queued requests move over. Raises ModelLoadError when no version can be served
        (the model is then unavailable, with the reason)."""
        specs = await asyncio.to_thread(self.repository.load, name, config_override)
        self._requested.add(name)
        made = [(spec, await self._new_session(spec)) for spec in specs]
        previous = {sid for sid, s in self._sessions.items() if s.spec.name == name}
        self._forget_composites(name)
        self._unschedulable.pop(name, None)
        kept: set[str] = set()
        for spec, outcome in made:
            if isinstance(outcome, str):
                self._unschedulable[spec.name] = outcome
            else:
                kept.add(self._insert(spec, outcome))
        self._retiring |= previous - kept
        try:
            await self.replan("load")
        finally:
            for sid in previous - kept:
                self._retiring.discard(sid)
                self._sessions.pop(sid, None)
        reason = self._unschedulable.get(name)
        if reason is not None and not kept:
            raise ModelLoadError(f"failed to load {name!r}: {reason}")

    async def unload_model(self, name: str) -> None:
        await asyncio.to_thread(self.repository.unload, name)
        self._requested.discard(name)
        self._forget_model(name)
        await self.replan("unload")

    # ------------------------------------------------------------------------------- sessions
    def _forget_model(self, name: str) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.spec.name == name]:
            del self._sessions[sid]
            self._stage_of.pop(sid, None)
        self._forget_composites(name)
        self._refresh_trunks()

    def _forget_composites(self, name: str) -> None:
        """Forget model ``name`` as a task, an ensemble or an application: its split and its stages'
        sessions go with it (a reload splits its SLO afresh)."""
        for composite in [c for c in self._splits if c.rsplit(":", 1)[0] == name]:
            del self._splits[composite]
        for sid in [sid for sid, composite in self._stage_of.items() if composite.rsplit(":", 1)[0] == name]:
            self._sessions.pop(sid, None)
            del self._stage_of[sid]
        for table in (self._tasks, self._ensembles, self._applications):
            for sid in [sid for sid, made in table.items() if made.spec.name == name]:
                del table[sid]

    async def _add_session(self, spec: ModelSpec) -> None:
        outcome = await self._new_session(spec)
        if isinstance(outcome, str):
            self._unschedulable[spec.name] = outcome
        else:
            self._insert(spec, outcome)

    async def _new_session(self, spec: ModelSpec) -> _Session | ServedTask | Ensemble | Application | str:
        """The session (or task) serving ``spec``, profiled on this machine; or why it cannot be served."""
        sid = session_id(spec)
        if spec.platform == PLATFORM_VARIANTS:  # no model of its own: planned through its variants
            return ServedTask.from_spec(spec)
        if spec.platform == PLATFORM_ENSEMBLE:  # no model of its own: its steps are ordinary requests
            return Ensemble.from_spec(spec)
        if spec.platform == PLATFORM_APPLICATION:  # code whose calls are ordinary requests
            try:
                return await asyncio.to_thread(Application.load, spec)
            except ApplicationLoadError as exc:
                logger.warning("model %s version %s will not be served: %s", spec.name, spec.version, exc)
                return str(exc)
        try:
            profile = await asyncio.to_thread(self._scheduling_profile, spec)
            _check_feasible(spec, profile, self.config)
            cut = trunk_profile = head = None
            if self.config.prefix_batching and prefix_tensor(spec) is not None:
                cut = await asyncio.to_thread(cut_model, spec)
                trunk_profile = self._trunk_profile(cut) or await asyncio.to_thread(
                    self._scheduling_profile, cut.trunk_spec()
                )
                head = await asyncio.to_thread(self._head_profile, cut)
        except (SquishyError, OSError, PrefixError) as exc:
            logger.warning("model %s version %s will not be served: %s", spec.name, spec.version, exc)
            return str(exc)
        batching = spec.config.dynamic_batching if spec.config is not None else None
        levels = int(batching.priority_levels) if batching is not None else 0
        default = int(batching.default_priority_level) if batching is not None else 0
        return _Session(sid, spec, profile, levels, default or levels, self.config.settings, cut, trunk_profile, head)

    def _head_profile(self, cut: PrefixCut) -> Profile | None:
        """The head's own ℓ(b), measured like a model's (a head is small: milliseconds), or given beside it
        (``prefix-<tensor>/head.profile.json``). None where the user gave the model's profile and not the
        head's: the scheduler then takes the model's minus the trunk's, from the numbers the user gave."""
        head = replace(cut.head_spec(), name=f"{cut.model.name}.head")
        if self.repository.user_profiled(cut.model) and not self.repository.user_profiled(head):
            return None
        return self._scheduling_profile(head)

    def _insert(self, spec: ModelSpec, made: _Session | ServedTask | Ensemble | Application) -> str:
        sid = session_id(spec)
        if isinstance(made, ServedTask):
            self._tasks[sid] = made
        elif isinstance(made, Ensemble):
            self._ensembles[sid] = made
        elif isinstance(made, Application):
            self._applications[sid] = made
        else:
            self._sessions[sid] = made
            self._refresh_trunks()
        self.stats.ensure(spec.name, spec.version)
        return sid

    def _trunk_profile(self, cut: PrefixCut) -> Profile | None:
        """The profile of the same trunk, when another session measured it already."""
        for session in self._sessions.values():
            known = session.cut
            if known is not None and (known.digest, known.group_name) == (cut.digest, cut.group_name):
                return session.trunk_profile
        return None

    def _refresh_trunks(self) -> None:
        """The prefix groups among the sessions that declare a trunk: those whose trunks are the same graph
        and weights (``squishy.runtime.prefix.group_cuts``). A group that keeps its members keeps its
        trunk's observed slowdown."""
        cuts = [s.cut for sid, s in self._sessions.items() if s.cut is not None and sid not in self._stage_of]
        trunks: dict[str, _Trunk] = {}
        for members in group_cuts(cuts):
            sids = [session_id(cut.model) for cut in members]
            spec = replace(
                members[0].trunk_spec(),
                max_batch_size=min(cut.model.max_batch_size for cut in members),
                slo_ms=min(cut.model.slo_ms for cut in members),
            )
            sid = session_id(spec)
            known = self._trunks.get(sid)
            if known is not None and set(known.heads) == set(sids):
                trunks[sid] = known
                continue
            # New members: the group's executors are made again with every member's head.
            self._executors = {key: e for key, e in self._executors.items() if key[1] != sid}
            profile = self._sessions[sids[0]].trunk_profile
            assert profile is not None, "a session with a cut has its trunk's profile"
            session = _Session(sid, spec, profile, 0, 0, self.config.settings)
            heads = {member: cut.head_spec() for member, cut in zip(sids, members, strict=True)}
            trunks[sid] = _Trunk(session, members[0].tensor.name, heads)
        self._trunks = trunks

    def planning_profiles(self) -> dict[str, Profile]:
        """What the planner packs with: ℓ(b) scaled by the slowdown observed while serving (the plan
        follows the machine as it is), every session's and every prefix group's trunk's."""
        profiles = {sid: s.planning_profile() for sid, s in self._sessions.items()}
        profiles.update({sid: t.session.planning_profile() for sid, t in self._trunks.items()})
        profiles.update(self._head_profiles())
        return profiles

    def _head_profiles(self) -> dict[str, Profile]:
        return {head_key(sid): s.head_profile for sid, s in self._sessions.items() if s.head_profile is not None}

    def _profiled(self) -> dict[str, Profile]:
        """Every session's and trunk's profile as measured (early drop scales it by its own slowdown)."""
        profiles = {sid: s.profile for sid, s in self._sessions.items()}
        profiles.update({sid: t.session.profile for sid, t in self._trunks.items()})
        profiles.update(self._head_profiles())
        return profiles

    def _max_batch(self, allocation: Allocation) -> int:
        """The largest batch an allocation's session can run: a prefix group's, what its trunk and every
        member can take."""
        if not allocation.members:
            return self._sessions[allocation.model].profile.max_batch
        trunk = self._trunks[allocation.model].session.profile.max_batch
        return min(trunk, *(self._sessions[m.model].profile.max_batch for m in allocation.members))

    def _session_of(self, sid: str) -> _Session:
        """A planned session: a model's, or a prefix group's trunk."""
        session = self._sessions.get(sid)
        return session if session is not None else self._trunks[sid].session

    def _scheduling_profile(self, spec: ModelSpec) -> Profile:
        return scheduling_profile(self.repository, spec, self.config)

    def _variant_sessions(self) -> dict[str, VariantSession]:
        """Model name → its newest version's session (a task's variant is named by model)."""
        newest: dict[str, _Session] = {}
        for session in self._sessions.values():
            if session.session_id in self._stage_of:
                continue
            known = newest.get(session.spec.name)
            if known is None or int(session.spec.version) > int(known.spec.version):
                newest[session.spec.name] = session
        return {name: VariantSession(s.session_id, s.spec) for name, s in newest.items()}

    def _scheduler_tasks(self) -> dict[str, Task]:
        sessions = self._variant_sessions()
        return {sid: scheduler_task(task, sessions) for sid, task in self._valid_tasks.items()}

    def _variant_models(self) -> set[str]:
        return {name for task in self._valid_tasks.values() for name in task.variants}

    def _plan_keys(self, now_s: float, measured: Mapping[Hashable, float] | None = None) -> list[str]:
        """The sessions and tasks to plan: every plain session, every task whose variants are all ready,
        and a variant only when requests name it directly (a variant no task chose costs no backend).
        Tasks that cannot be served are marked unavailable, with the reason."""
        sessions = self._variant_sessions()
        self._valid_tasks = {}
        for sid, task in self._tasks.items():
            problem = task_problem(task, sessions)
            if problem is None:
                self._valid_tasks[sid] = task
                self._unschedulable.pop(task.spec.name, None)
            else:
                self._unschedulable[task.spec.name] = problem
        self.control.chooser = self._chooser if self._valid_tasks else None
        variants = self._variant_models()
        measured = measured if measured is not None else self.control.measured(now_s)
        keys = [
            sid
            for sid, s in self._sessions.items()
            if sid not in self._retiring
            and (s.spec.name not in variants or measured.get(sid, 0.0) > 0)
            and (sid not in self._stage_of or measured.get(sid, 0.0) > 0)
        ]
        return keys + list(self._valid_tasks)

    # ---------------------------------------------------------------------------------- planning
    async def replan(self, reason: str) -> Plan | None:
        """Plan for the measured rates now, whatever the triggers say, and install the plan."""
        async with self._plan_lock:
            if not self._sessions:
                self._commit(None)
                return None
            now_s = self.clock.now_ms() / 1000.0
            request = self.control.request(now_s, self._plan_keys(now_s), reason)
            prepared = await asyncio.to_thread(self.prepare, request)
            self._commit(prepared)
            return self.plan

    def control_step(self) -> PlanDecision | None:
        """One tick of the control loop, all in the caller's thread: publish the measured rates, and
        re-plan and install when a re-plan is due. Returns the decision installed (None: none was)."""
        request = self._control_request()
        if request is None:
            return None
        prepared = self.prepare(request)
        return prepared.decision if self._commit(prepared) else None

    def _control_request(self) -> PlanRequest | None:
        now_s = self.clock.now_ms() / 1000.0
        measured = self.control.measured(now_s)
        self.metrics.set_session_rates(
            {SessionKey(sid, s.spec.slo_ms): measured.get(sid, 0.0) for sid, s in self._sessions.items()},
            labels=self._labels(),
        )
        for session in self._sessions.values():
            self.metrics.set_slowdown(session.spec.name, session.spec.version, session.latency.slowdown)
        for application in self._applications.values():
            for (parent, child), gamma in application.fan_out().items():
                self.metrics.set_fan_out(application.spec.name, parent, child, gamma)
        if not self._sessions:
            return None
        if self._refresh_splits(now_s, measured):
            return self.control.request(now_s, self._plan_keys(now_s, measured), "split")
        return self.control.decide(now_s, self._plan_keys(now_s, measured))

    # ------------------------------------------------------------------------------ query analysis
    def _refresh_splits(self, now_s: float, measured: Mapping[Hashable, float]) -> bool:
        """Split each composite's SLO over its call tree for its measured rate and fan-out (Nexus's query
        analysis), once an epoch, and at once for a composite with traffic and no split yet. Each stage
        gets a session of its own with its budget as SLO. Returns whether a split changed enough that the
        plan should follow now."""
        trees = self._composite_trees()
        fresh = {cid for cid in trees if cid not in self._splits and measured.get(cid, 0.0) > 0}
        due = now_s >= self._splits_due_s
        if not due and not fresh:
            return False
        if due:
            self._splits_due_s = now_s + self.config.epoch_s
        changed = False
        for cid, (spec, stages, step_stage) in trees.items():
            rate = measured.get(cid, 0.0)
            if rate > 0 and (due or cid in fresh):
                changed |= self._split(cid, spec, stages, step_stage, rate)
        if due:
            for application in self._applications.values():
                application.roll()
        return changed

    def _composite_trees(self) -> dict[str, tuple[ModelSpec, list[CallStage], dict[int, int]]]:
        trees: dict[str, tuple[ModelSpec, list[CallStage], dict[int, int]]] = {}
        for cid, ensemble in self._ensembles.items():
            stages, step_stage = ensemble_tree(ensemble)
            trees[cid] = (ensemble.spec, stages, step_stage)
        for cid, application in self._applications.items():
            if application.edges and application.requests > 0:  # a window with no calls measures no γ
                trees[cid] = (application.spec, application_tree(application), {})
        return trees

    def _split(
        self, cid: str, spec: ModelSpec, stages: list[CallStage], step_stage: dict[int, int], rate: float
    ) -> bool:
        plain: list[_Session] = []
        for stage in stages[1:]:
            try:
                called = self.model_spec(stage.model, stage.version or None)
            except SquishyError:
                return False  # a stage's model is not ready: its calls say so
            session = self._sessions.get(session_id(called))
            if session is None:
                return False  # a composite calling a composite: not split (yet)
            plain.append(session)
        multiplier = [1.0]
        for stage in stages[1:]:
            multiplier.append(multiplier[stage.parent] * stage.gamma)
        rows: list[tuple[str, int, Profile | None, float]] = [(stages[0].name, -1, None, rate)]
        called_stages = zip(stages[1:], plain, multiplier[1:], strict=True)
        rows += [(stage.name, stage.parent, session.profile, rate * m) for stage, session, m in called_stages]
        try:
            budgets = split_tree(rows, spec.slo_ms, self.config.settings, even=self.config.query_split == "even")
        except InfeasibleError:
            logger.warning("composite %s: no split of its %g ms SLO fits its stages' profiles", spec.name, spec.slo_ms)
            return False
        previous = self._splits.get(cid)
        changed = previous is None or any(
            abs(previous.budgets.get(name, 0.0) - budget) > SPLIT_HYSTERESIS * budget
            for name, budget in budgets.items()
        )
        sessions: dict[int, str] = {}
        for index, (stage, session) in enumerate(zip(stages[1:], plain, strict=True), start=1):
            stage_sid = f"{session.session_id}@{spec.name}/{stage.name}"
            budget = budgets[stage.name]
            existing = self._sessions.get(stage_sid)
            if existing is None:
                profile = Profile.from_dict({**session.profile.to_dict(), "model": stage_sid})
                self._sessions[stage_sid] = _Session(
                    stage_sid,
                    replace(session.spec, slo_ms=budget),
                    profile,
                    session.priority_levels,
                    session.default_priority,
                    self.config.settings,
                )
            else:
                existing.spec = replace(existing.spec, slo_ms=budget)
            self._stage_of[stage_sid] = cid
            sessions[index] = stage_sid
            self.metrics.set_stage_split(spec.name, stage.name, budget, rate * multiplier[index])
        self.metrics.set_stage_split(spec.name, stages[0].name, budgets[stages[0].name], rate)
        by_model: dict[str, int] = {}
        for index, stage in enumerate(stages[1:], start=1):
            by_model.setdefault(stage.model, index)
        self._splits[cid] = _Split(budgets, below_ms(stages, budgets), sessions, step_stage, by_model)
        if changed:
            logger.info(
                "split of %s (%g ms at %.1f/s): %s",
                spec.name,
                spec.slo_ms,
                rate,
                ", ".join(f"{name} {budget:g} ms" for name, budget in budgets.items() if name != stages[0].name),
            )
        return changed

    def install_plan(self, plan: Plan, reason: str = "manual") -> None:
        """Run ``plan`` from now on (an operator's or a test's plan; the control loop's next re-plan starts
        from it). Its sessions must be the core's session ids."""
        rates = {sid: rate for sid, rate in ((str(k.model), r) for k, r in plan.rates_by_session().items())}
        request = PlanRequest(reason, self.clock.now_ms() / 1000.0, rates)
        assignment = self._place(plan)
        self._commit(_Prepared(PlanDecision(request, plan, 1.0, True), assignment))

    def _place(self, plan: Plan) -> Assignment:
        assignment = assign(
            plan,
            self._assignment.backend_slot,
            len(self.workers),
            self._scheduled_latency,
            self._max_batch,
            lost=frozenset(self._lost_slots),
        )
        self._load_executors(assignment)
        return assignment

    def prepare(self, request: PlanRequest) -> _Prepared:
        """The plan for ``request`` placed on the slots, with every executor it needs created (slow: the
        server runs it off the event loop)."""
        decision = self.control.plan_for(request)
        if not decision.fits:
            logger.warning(
                "the models need %d backends but there are %d slots", decision.plan.num_backends, len(self.workers)
            )
        return _Prepared(decision, self._place(decision.plan))

    def _commit(self, prepared: _Prepared | None) -> bool:
        """Install a prepared plan (or none), unless it is an epoch re-plan that would change nothing.
        Returns whether a plan was installed."""
        if prepared is None:
            with self.lock:
                self._route_tasks(None)
                self._install(None, Assignment({}, {}))
            self.control.forget()
            return False
        decision = prepared.decision
        if decision.request.reason != "manual" and not self.control.worth_installing(decision):
            self.control.skip(decision)
            return False
        with self.lock:
            self._route_tasks(decision)
            moved = self._install(decision.plan, prepared.assignment)
        self.control.installed(decision)
        self.metrics.record_replan(str(decision.request.reason), moved)
        # What the slots cannot carry: early drop sheds it at once, and the gauge says how much it is.
        short = max(0.0, 1.0 - decision.headroom)
        labels = self._labels()
        self.metrics.set_capacity(
            decision.headroom,
            {labels[str(sid)]: rate * short for sid, rate in decision.request.rates.items() if str(sid) in labels},
            decision.required_backends,
        )
        logger.info(
            "plan (%s): %d backends, %d sessions, headroom %.2fx",
            decision.request.reason,
            decision.plan.num_backends,
            len(decision.request.rates),
            decision.headroom,
        )
        return True

    def _route_tasks(self, decision: PlanDecision | None) -> None:
        """Under the lock: point each task at the variant the decision chose, at the share it serves."""
        choice = decision.choice if decision is not None else None
        asked = decision.request.rates if decision is not None else {}
        for sid, task in self._tasks.items():
            task.follow(choice, sid, asked)
            if task.route is not None:
                variant = self._sessions[str(task.route)].spec.name
                self.metrics.set_variant_choice(task.spec.name, variant, task.accuracy or 0.0, task.share)
        if choice is not None and choice.delivered_accuracy is not None:
            self.metrics.set_planned_accuracy(choice.delivered_accuracy)

    def _load_executors(self, assignment: Assignment) -> None:
        """Create every executor the assignment needs that is missing (before the switch)."""
        threads = self.config.layout.threads_per_slot
        kind = "null" if self.config.executor.startswith("null") else self.config.executor
        needed = {(slot, str(share.key.model)) for slot, plan in assignment.slots.items() for share in plan.shares}
        if self.config.work_stealing:  # every slot can run every planned session's stolen batches
            needed |= {(w, sid) for w in self._live_slots() for _, sid in needed}
        for key in sorted(needed):
            if key not in self._executors:
                self._executors[key] = self._make_executor(*key, kind, threads)

    def _make_executor(self, slot: int, sid: str, kind: str, threads: int) -> Executor:
        null = self.config.executor == "null"  # sleeps the profiled ℓ(b); null-zero does no work at all
        factory = self.config.executor_factory

        def make(spec: ModelSpec, profile: Profile) -> Executor:
            if factory is not None:
                return factory(slot, spec, kind, threads, profile if null else None)
            return make_executor(spec, kind, threads, profile if null else None, self.clock)

        trunk = self._trunks.get(sid)
        if trunk is None:
            session = self._sessions[sid]
            return make(session.spec, session.profile)
        trunk_profile = trunk.session.profile
        heads = {
            member: make(
                head, self._sessions[member].head_profile or head_profile(self._sessions[member].profile, trunk_profile)
            )
            for member, head in trunk.heads.items()
        }
        return PrefixExecutor(
            trunk.session.spec, make(trunk.session.spec, trunk_profile), heads, trunk.tensor, _member_of
        )

    def _install(self, plan: Plan | None, assignment: Assignment) -> int:
        """Under the lock: switch to ``plan``. Returns how many sessions landed on a slot they were not on."""
        weights: dict[str, dict[int, float]] = {}
        queue_session: dict[str, str] = {}
        planned: set[str] = set()
        moved = 0
        orphans: list[tuple[str, Item]] = []
        stealable = planned_sessions(assignment) if self.config.work_stealing else set()
        for index, worker in enumerate(self.workers):
            slot_plan = assignment.slots.get(index)
            slots: list[Slot] = []
            for share in slot_plan.shares if slot_plan is not None else ():
                sid = str(share.key.model)
                session = self._session_of(sid)
                if share.allocation.members:  # a prefix group: its batches' time depends on the plan's mix
                    size = self._max_batch(share.allocation)
                    session.latency.retable(prefix_group_table(share.allocation, self._profiled(), size))
                    queue_session.update({m.model: sid for m in share.allocation.members})
                work = SessionWork(session.spec, self._executors[(index, sid)])
                queue = SessionQueue(session.latency.latency_ms, DropPolicy.EARLY)
                slots.append(Slot(sid, queue, share.batch, payload=work))
                weights.setdefault(sid, {})[index] = weights.get(sid, {}).get(index, 0.0) + share.rate
                planned.add(sid)
            declare_fallbacks(slots, [(task.chain(), task.spec.slo_ms) for task in self._tasks.values()])
            before = set(worker.turn.sessions)
            moved += sum(1 for slot in slots if slot.session not in before)
            budget = slot_plan.steal_budget_ms if slot_plan is not None else math.inf
            leaving = worker.turn.assign(slots, steal_budget_ms=budget, stealable=stealable)
            worker.spare_executors = {
                sid: self._executors[(index, sid)] for sid in stealable if (index, sid) in self._executors
            }
            # A prefix group's requests go back to their own models' sessions (alone, or in a new group).
            orphans.extend(
                (str(slot.session) if slot.session in self._sessions else item.payload.routed, item)
                for slot in leaving
                for item in slot.queue.drain()
            )
        self._routers = {
            sid: DeficitRoundRobin(list(w), list(w.values())) for sid, w in weights.items() if sum(w.values()) > 0
        }
        self._queue_session = queue_session
        for member in queue_session:  # each member routed by its own rates in the group (as the plan says)
            member_weights: dict[int, float] = {}
            for slot_index, _, rate in assignment.routes(plan, member) if plan is not None else ():
                member_weights[slot_index] = member_weights.get(slot_index, 0.0) + rate
            if sum(member_weights.values()) > 0:
                self._routers[member] = DeficitRoundRobin(list(member_weights), list(member_weights.values()))
        orphans.extend(self._stranded)  # a lost slot's requests that no slot could take before this plan
        self._stranded = []
        self.requests_moved += len(orphans)
        now_ms = self.clock.now_ms()
        for sid, item in orphans:  # queued requests move with their session
            pending: _Pending = item.payload
            task = pending.task
            if task is not None and task.route is not None:
                sid = str(task.route)  # or to the variant now chosen for their task
            elif sid not in self._routers and not pending.request.model_version:
                sid = self._serving_version(pending.spec.name) or sid  # a reload's new version takes them
                if sid in self._sessions:
                    pending.spec = self._sessions[sid].spec
            router = self._routers.get(sid)
            if router is None:
                self._count_failed(item)
                item.payload.reply(self._not_scheduled(pending.spec))
            elif self._queue(sid, router, item, now_ms) is None:
                self._count_dropped(item.payload.spec, [item])
                item.payload.reply(_dropped_error(item.payload.spec))
        self._assignment = assignment
        # Forget executors no slot uses any more (an unloaded model, a session that moved). A batch still
        # running on one keeps its own reference, so it is freed when that batch is done, not under it.
        in_use = {(w, str(s.key.model)) for w, p in assignment.slots.items() for s in p.shares}
        if self.config.work_stealing:
            in_use |= {(w, sid) for w in self._live_slots() for sid in planned}
        self._executors = {key: executor for key, executor in self._executors.items() if key in in_use}
        self.lock.notify_all()
        if plan is not None:
            self.metrics.set_plan(plan, labels=self._labels())
        return moved

    def _scheduled_latency(self, allocation: Allocation, batch: int) -> float:
        """ℓ(batch) as the scheduler counts it (margins included; a prefix group's at the plan's mix)."""
        if allocation.members:
            key = (allocation.model, tuple((m.model, m.slo_ms, round(m.rate, 3)) for m in allocation.members))
            profile = self._group_profiles.get(key)
            if profile is None:
                if len(self._group_profiles) > 256:  # one entry per mix planned: keep the recent ones
                    self._group_profiles.clear()
                profile = allocation_profile(allocation, self._profiled(), self.config.settings)
                self._group_profiles[key] = profile
        else:
            profile = self._sessions[allocation.model].scheduled
        return profile.batch_latency_ms(batch) if batch <= profile.max_batch else math.inf

    def _model_of(self, sid: str) -> str:
        session = self._sessions.get(sid)
        return session.spec.name if session is not None else sid

    def _labels(self) -> dict[str, tuple[str, str]]:
        labels = {sid: (s.spec.name, s.spec.version) for sid, s in self._sessions.items()}
        labels.update({sid: (t.session.spec.name, t.session.spec.version) for sid, t in self._trunks.items()})
        return labels

    # ------------------------------------------------------------------------------ control loop
    async def _control_loop(self) -> None:
        while True:
            await self.clock.pause_ms(self.config.control_tick_s * 1000.0)
            try:
                request = self._control_request()
                if request is None:
                    continue
                async with self._plan_lock:
                    prepared = await asyncio.to_thread(self.prepare, request)
                    self._commit(prepared)
            except Exception:  # the control loop must outlive any one failed re-plan
                logger.exception("re-plan failed; keeping the current plan")
                self.control.policy.replanned(self.clock.now_ms() / 1000.0)

    # ------------------------------------------------------------ BatchSink (worker threads call these)
    def batch_done(
        self, slot: Slot, items: Sequence[Item], outputs: Sequence[dict[str, np.ndarray]], timing: BatchTiming
    ) -> None:
        work: SessionWork = slot.payload
        spec = work.spec
        finish_ms = self.clock.now_ms()
        claimed = self._claim(items)
        if len(claimed) < len(items):  # the watchdog answered some at their deadline
            kept = set(map(id, claimed))
            outputs = [out for item, out in zip(items, outputs, strict=True) if id(item) in kept]
        inputs = sum(item.size for item in items)
        trunk = self._trunks.get(str(slot.session))
        if trunk is None:
            self._record_batch(spec, items, timing, 1.0)
        else:  # a prefix batch counts for each member, its compute shared by rows
            by_member: dict[str, list[Item]] = {}
            for item in items:
                by_member.setdefault(item.payload.routed, []).append(item)
            for member_items in by_member.values():
                share = sum(item.size for item in member_items) / inputs
                self._record_batch(member_items[0].payload.spec, member_items, timing, share)
        session = self._sessions.get(str(slot.session)) or (trunk.session if trunk is not None else None)
        if session is not None:
            session.latency.observe(inputs, timing.compute_ms)
        answers: list[tuple[Reply, InferResponse | BaseException]] = []
        for item, output in zip(claimed, outputs, strict=True):
            pending: _Pending = item.payload
            called = pending.spec  # the task, when a variant answered for it
            latency_ms = finish_ms - pending.arrival_ms
            met = finish_ms <= item.deadline_ms
            self.stats.record_success(called.name, called.version, round(latency_ms * 1e6))
            self.metrics.record_request(called.name, called.version, "met" if met else "late", latency_ms)
            parameters = {VARIANT_PARAMETER: spec.name} if pending.task is not None else {}
            if pending.task is not None and pending.routed != slot.session:
                self.metrics.record_variant_fallback(called.name, self._model_of(pending.routed), spec.name)
            response = InferResponse(called.name, called.version, output, pending.request.request_id, parameters)
            answers.append((pending.reply, response))
        _deliver(answers)

    def _record_batch(self, spec: ModelSpec, items: Sequence[Item], timing: BatchTiming, share: float) -> None:
        """Statistics and metrics of one model's batch (``share`` of its compute, for a prefix batch)."""
        queue_ns = sum(max(0, round((timing.started_ms - item.payload.arrival_ms) * 1e6)) for item in items)
        inputs = sum(item.size for item in items)
        input_ns, infer_ns, output_ns = (round(n * share) for n in (timing.input_ns, timing.infer_ns, timing.output_ns))
        self.stats.record_batch(
            spec.name,
            spec.version,
            inputs=inputs,
            requests=len(items),
            queue_ns=queue_ns,
            input_ns=input_ns,
            infer_ns=infer_ns,
            output_ns=output_ns,
        )
        compute_ns = input_ns + infer_ns + output_ns
        self.metrics.record_batch(spec.name, spec.version, inputs, queue_ns, compute_ns, requests=len(items))

    def batch_failed(self, slot: Slot, items: Sequence[Item], error: BaseException) -> None:
        work: SessionWork = slot.payload
        message = error if isinstance(error, InternalError) else InternalError(f"model {work.spec.name!r}: {error}")
        self._fail(self._claim(items), message)

    def batch_retried(self, slot: Slot, items: Sequence[Item]) -> None:
        spec = slot.payload.spec
        self.metrics.record_retry(spec.name, spec.version)

    def _fail(self, items: Sequence[Item], error: BaseException) -> None:
        for item in items:
            self._count_failed(item)
        _deliver([(item.payload.reply, error) for item in items])

    def _claim(self, items: Sequence[Item]) -> list[Item]:
        """The items nobody has answered yet, now marked answered: exactly one reply per request."""
        with self._answer_lock:
            fresh = [item for item in items if not item.payload.answered]
            for item in fresh:
                item.payload.answered = True
        return fresh

    # ----------------------------------------------------------- HangSink (the watchdog calls these)
    def overdue(self, batch: RunningBatch, items: Sequence[Item]) -> None:
        late = self._claim(items)
        if not late:
            return
        spec = batch.slot.payload.spec
        for item in late:
            self._count_dropped(item.payload.spec, [item])
        budget_ms = late[0].deadline_ms - late[0].arrival_ms
        error = UnavailableError(
            f"model {spec.name!r}: the request did not finish within its {budget_ms:g} ms deadline "
            f"(its batch of {batch.inputs} was still running, predicted {batch.expected_ms:.1f} ms)"
        )
        _deliver([(item.payload.reply, error) for item in late])

    def hung(self, worker: Worker, batch: RunningBatch, ran_ms: float, bound_ms: float) -> None:
        """Give up on ``worker``: its thread is stuck in ``batch``. A fresh worker takes over its turn (the
        other sessions' queues stay where they are), the model is unavailable until it is loaded again,
        and every request for it still queued is answered now. Called from the watchdog's thread."""
        spec: ModelSpec = batch.slot.payload.spec
        trunk = self._trunks.get(str(batch.slot.session))
        # A prefix group's trunk that hangs stops every member: they all run it.
        names = {self._sessions[m].spec.name for m in trunk.heads if m in self._sessions} if trunk else {spec.name}
        reason = (
            f"a batch of {batch.inputs} ran {ran_ms:.0f} ms, past {bound_ms:.0f} ms "
            f"({self.config.hang.hang_factor:g}x its predicted {batch.expected_ms:.1f} ms); "
            "load the model again to serve it"
        )
        with self.lock:
            if worker.abandoned or self.workers[worker.index] is not worker:
                return
            worker.abandoned = True
            for name in names:
                self._unschedulable[name] = reason
            stuck = {sid for sid, s in self._sessions.items() if s.spec.name in names}
            if trunk is not None:
                stuck.add(str(batch.slot.session))
            for sid in stuck:
                self._routers.pop(sid, None)
            queued = [item for turn in self.machine.backends for slot in turn.slots if slot.session in stuck
                      for item in slot.queue.drain()]  # fmt: skip
            turn = worker.turn
            turn.assign(
                [slot for slot in turn.slots if slot.session not in stuck],
                steal_budget_ms=turn.steal_budget_ms,
                stealable=turn.stealable - stuck,
            )
            turn.busy = False
            fresh = Worker(worker.index, self, self.lock, self.clock, turn=turn, watch=self.watchdog)
            fresh.spare_executors = {sid: e for sid, e in worker.spare_executors.items() if sid not in stuck}
            self.workers[worker.index] = fresh
            fresh.start()
            self.lock.notify_all()
        logger.error("model %s is unavailable: %s", ", ".join(sorted(names)), reason)
        self.metrics.record_hang(spec.name, spec.version)
        cancelled = batch.executor.cancel()
        self._fail(self._claim(batch.items), UnavailableError(f"model {spec.name!r} stopped responding: {reason}"))
        self._fail(queued, UnavailableError(f"model {spec.name!r} is unavailable: {reason}"))
        if not cancelled:
            logger.warning("the run of %s cannot be stopped; its thread is left to finish on its own", spec.name)
        if self._loop is not None and not self._loop.is_closed():
            for name in sorted(names):
                self._loop.call_soon_threadsafe(self._replan_without, name)

    def _replan_without(self, name: str) -> None:
        """On the event loop, after a hang: forget the model's sessions and plan the rest again."""
        self._forget_model(name)
        self._unschedulable.setdefault(name, "it stopped responding")
        task = asyncio.ensure_future(self.replan("hang"))
        task.add_done_callback(_log_failure)

    def _live_slots(self) -> list[int]:
        return [index for index in range(len(self.workers)) if index not in self._lost_slots]

    def slot_lost(self, worker: Worker, slot: Slot, items: Sequence[Item], error: SlotLostError) -> None:
        """A slot's process is gone (its Ray actor or its node died); called from that slot's worker. The
        slot leaves every plan for good; the requests it held (the batch in flight and its queues) go once
        to another slot of their session while their deadlines allow, or get an error now; and the plan
        is made again for the slots that remain."""
        with self.lock:
            if worker.abandoned or self.workers[worker.index] is not worker:
                return
            worker.abandoned = True  # its thread exits; nothing runs on the slot again
            self._lost_slots.add(worker.index)
            self.control.capacity = len(self._live_slots())
            turn = worker.turn
            held = [(slot, item) for item in items] + [(s, item) for s in turn.slots for item in s.queue.drain()]
            turn.assign([], steal_budget_ms=turn.steal_budget_ms, stealable=frozenset())
            turn.busy = False
            self._executors = {key: e for key, e in self._executors.items() if key[0] != worker.index}
            for sid, router in list(self._routers.items()):
                kept = [(t, w) for t, w in zip(router.targets, router.weights, strict=True) if t != worker.index]
                if len(kept) == len(router.targets):
                    continue
                if sum(w for _, w in kept) > 0:
                    self._routers[sid] = DeficitRoundRobin([t for t, _ in kept], [w for _, w in kept])
                else:
                    del self._routers[sid]
                    self._rerouting.add(sid)
            now_ms = self.clock.now_ms()
            failed: list[Item] = []
            for held_slot, item in held:
                pending: _Pending = item.payload
                if pending.answered:
                    continue
                sid = str(held_slot.session) if held_slot.session in self._sessions else pending.routed
                router = self._routers.get(sid)
                if pending.retried:
                    failed.append(item)
                elif router is None:  # no other slot runs its session yet: it waits for the new plan
                    pending.retried = True
                    self._stranded.append((sid, item))
                elif self._queue(sid, router, item, now_ms) is None:
                    failed.append(item)
                else:
                    pending.retried = True
            self.lock.notify_all()
        logger.error("slot %d is lost (%s); %d requests it held get an error", worker.index, error, len(failed))
        self.metrics.record_slot_lost(worker.index)
        self._fail(self._claim(failed), UnavailableError(f"{error}; no other slot could take the request in time"))
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._replan_after_loss)

    def _replan_after_loss(self) -> None:
        task = asyncio.ensure_future(self.replan("slot lost"))
        task.add_done_callback(_log_failure)
        task.add_done_callback(lambda _: self._fail_stranded())

    def _fail_stranded(self) -> None:
        """After the re-plan that follows a loss: whatever it could not place is answered now, not never."""
        with self.lock:
            stranded = [item for _, item in self._stranded]
            self._stranded = []
            self._rerouting.clear()
        self._fail(self._claim(stranded), UnavailableError("its slot was lost and no plan could place it again"))

    def dropped(self, slot: Slot, items: Sequence[Item]) -> None:
        for item in items:
            self._count_dropped(item.payload.spec, [item])
        _deliver([(item.payload.reply, _dropped_error(item.payload.spec)) for item in items])

    def _count_dropped(self, spec: ModelSpec, items: Sequence[Item]) -> None:
        now_ms = self.clock.now_ms()
        for item in items:
            self.stats.record_failure(spec.name, spec.version, round((now_ms - item.payload.arrival_ms) * 1e6))
            self.metrics.record_request(spec.name, spec.version, "dropped")

    def _count_shed(self, spec: ModelSpec, reason: str) -> None:
        self.stats.record_failure(spec.name, spec.version, 0)
        self.metrics.record_shed(spec.name, spec.version, reason)

    def _count_failed(self, item: Item) -> None:
        spec = item.payload.spec
        self.stats.record_failure(spec.name, spec.version, round((self.clock.now_ms() - item.payload.arrival_ms) * 1e6))
        self.metrics.record_request(spec.name, spec.version, "failed")


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("re-plan failed: %s", task.exception())


def _member_of(item: Item) -> str:
    """A prefix batch's request → the session of the model it called (its head)."""
    pending: _Pending = item.payload
    return pending.routed


def planned_sessions(assignment: Assignment) -> set[str]:
    return {str(share.key.model) for plan in assignment.slots.values() for share in plan.shares}


class _FutureReply:
    """A reply that resolves a future on its event loop (callable from any thread)."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future

    def __call__(self, outcome: InferResponse | BaseException) -> None:
        _deliver([(self, outcome)])


def _future_reply(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Reply:
    return _FutureReply(loop, future)


def _deliver(outcomes: Sequence[tuple[Reply, InferResponse | BaseException]]) -> None:
    """Answer many requests at once: futures of one event loop are resolved in one wake-up of that loop
    (one ``call_soon_threadsafe`` per batch, not per request); other replies are called directly."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for reply, outcome in outcomes:
        if isinstance(reply, _FutureReply):
            by_loop.setdefault(reply.loop, []).append((reply.future, outcome))
        else:
            reply(outcome)
    for loop, futures in by_loop.items():
        if not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, futures)


def _resolve(futures: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in futures:
        if future.done():  # the client went away; its answer has nowhere to go
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _dropped_error(spec: ModelSpec) -> UnavailableError:
    return UnavailableError(
        f"model {spec.name!r}: request dropped, it could not finish within its deadline (SLO {spec.slo_ms:g} ms)"
    )


def session_id(spec: ModelSpec) -> str:
    """The scheduler's name for a session: one model version (at the SLO its config sets)."""
    return f"{spec.name}:{spec.version}"


def scheduling_profile(repository: ModelRepository, spec: ModelSpec, config: ServingConfig) -> Profile:
    """ℓ(b) on one slot, as the scheduler sees it: named by the session, any batch size up to the model's
    max (ONNX Runtime runs any size; in between measured sizes ℓ is interpolated). The simulator's twin
    of this server reads the same profiles."""
    max_batch = max(spec.max_batch_size, 1)
    if config.executor == "null-zero":
        # No work at all: a token latency keeps every profile rule well defined.
        table = {str(b): 1e-3 for b in range(1, max_batch + 1)}
        return Profile.from_dict({"model": session_id(spec), "device": "null", "batch_ms": table})
    # Measured with every slot running at once, as they will while serving (shared caches and memory).
    measured = repository.profile(
        spec, config.layout.threads_per_slot, concurrency=config.layout.slots, progress=config.profile_progress
    )
    table = {str(b): v for b, v in measured.batch_ms.items() if b <= max_batch}
    if not table:
        raise WorkloadError(f"the profile of {spec.name!r} has no batch size within max_batch_size {max_batch}")
    data = {**measured.to_dict(), "model": session_id(spec), "batch_ms": table, "interpolate": max_batch > 1}
    data.pop("changes", None)
    data.pop("memory_mb", None)  # CPU memory is not the constraint that limits a slot here
    return Profile.from_dict(data)


def _check_feasible(spec: ModelSpec, profile: Profile, config: ServingConfig) -> None:
    budget = spec.slo_ms - config.network_ms
    need = 2 * profile.latency_ms(profile.min_batch) * config.profile_inflation
    if budget < need:
        raise WorkloadError(
            f"SLO {spec.slo_ms:g} ms is below what it takes here: 2 x ℓ(1) = {need:.1f} ms plus "
            f"{config.network_ms:g} ms of network margin (raise slo_ms in its config)"
        )

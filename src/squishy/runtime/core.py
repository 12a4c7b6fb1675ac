"""The serving core: models from the repository, a plan from the scheduler, backends that run it.

``ServingCore`` implements the frontend's ``ModelService``. Each ready model version is a session
(model, SLO). The core profiles every session on this machine, asks the scheduler for a plan that fits
the machine's execution slots, and gives every slot a ``Worker`` running the plan's sessions. Requests
are routed to the session's backends by deficit round robin on the plan's rates and queued under the
shared batching policy (early drop). The control loop measures each session's rate and re-plans every
epoch or when load leaves the plan's band; a new plan moves queued requests with their session, and
batches in flight finish where they are, so no accepted request is lost or answered twice.

Spare slots are not left idle: the plan is sized for the highest multiple of the measured load
(``headroom``) that still fits the slots, which leaves room for bursts. When even the measured load
does not fit, the plan is sized for the largest share that does and early drop sheds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squishy.batching import DropPolicy, Item, SessionQueue
from squishy.batching.limits import burst_batches
from squishy.cluster import SlotLayout, slot_layout
from squishy.control import EpochPolicy, RateEstimator
from squishy.errors import SquishyError, WorkloadError
from squishy.metrics import ServerMetrics
from squishy.profiles import Profile
from squishy.routing import DeficitRoundRobin
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
from squishy.runtime.backend import BatchSink, BatchTiming, SessionSlot, Worker
from squishy.runtime.executors import Executor, make_executor
from squishy.runtime.repository import ModelRepository
from squishy.runtime.stats import StatisticsBook
from squishy.scheduler import Plan, Session, SessionKey, Settings, Workload, make_plan
from squishy.scheduler.replan import replan

logger = logging.getLogger(__name__)

# How often the control loop looks at the measured rates (s).
CONTROL_TICK_S = 0.5
# Calibration of early drop's latency predictions from observed batches (see ``_Session.slowdown``).
SLOWDOWN_SMOOTHING = 0.05
MIN_SLOWDOWN, MAX_SLOWDOWN = 0.5, 3.0
# Headroom search: plan for up to this multiple of the measured load when slots are spare. Planning for
# much more would reshape the plan around load that is not there (e.g. a costly model's rate inflated onto
# the slot that serves tight-SLO models); spare time beyond it is used by work stealing instead.
DEFAULT_MAX_HEADROOM = 2.0
MIN_HEADROOM = 1e-4


@dataclass(frozen=True)
class ServingConfig:
    layout: SlotLayout = field(default_factory=slot_layout)
    executor: str = "auto"  # auto | onnxruntime | torch | null | null-zero (no work at all)
    epoch_s: float = 10.0  # re-plan at least this often (Nexus: 30 s on a cluster)
    min_replan_interval_s: float = 2.0  # and early on a load change, but not more often than this
    network_ms: float = 1.0  # taken off every SLO before packing: the request's path outside the executor
    profile_inflation: float = 1.1  # measured ℓ(b) × this: the executors share memory bandwidth
    min_rate_per_s: float = 1.0  # every ready model is provisioned at least this rate, so it has a backend
    max_headroom: float = DEFAULT_MAX_HEADROOM
    work_stealing: bool = True  # idle slots run batches of busy slots' sessions when their promises allow
    strict_readiness: bool = True  # ready only when every model asked for is ready (Triton's default)
    profile_progress: bool = False


@dataclass
class _Session:
    session_id: str
    spec: ModelSpec
    profile: Profile  # the scheduler's profile (model = session id), interpolated over batch sizes
    priority_levels: int
    default_priority: int
    # Observed ÷ profiled batch latency, smoothed: how fast batches really run while serving (the request
    # handling shares the cores). Early drop scales ℓ by it, so its in-time checks stay honest.
    slowdown: float = 1.0
    profiled_ms: Callable[[int], float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.profiled_ms = queue_latency(self.profile)

    def observe(self, inputs: int, infer_ms: float) -> None:
        predicted = self.profiled_ms(inputs)
        if predicted > 0:
            ratio = min(max(infer_ms / predicted, MIN_SLOWDOWN), MAX_SLOWDOWN)
            self.slowdown += SLOWDOWN_SMOOTHING * (ratio - self.slowdown)

    def latency_ms(self, inputs: int) -> float:
        """ℓ(inputs) as early drop should predict it: the profile, scaled by the observed slowdown."""
        return self.profiled_ms(inputs) * self.slowdown


@dataclass
class _Pending:
    """What a queued request carries through the backend: its future and what the reply needs."""

    future: asyncio.Future[InferResponse]
    request: InferRequest
    spec: ModelSpec
    arrival_ns: int


class ServingCore(BatchSink):
    """The ``ModelService`` behind ``squishy serve``."""

    def __init__(
        self,
        repository: ModelRepository,
        config: ServingConfig | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.config = config or ServingConfig()
        self.metrics = metrics or ServerMetrics()
        self.stats = StatisticsBook()
        self.rates = RateEstimator()
        self.epochs = EpochPolicy(epoch_s=self.config.epoch_s, min_interval_s=self.config.min_replan_interval_s)
        # One lock for every worker on this machine: queue operations are short, and sharing it lets an
        # idle worker steal a batch from a busy one (see ``Worker``).
        self._machine = threading.Condition()
        self._workers = [Worker(i, self, condition=self._machine) for i in range(self.config.layout.slots)]
        for worker in self._workers:
            worker.peers = [w for w in self._workers if w is not worker]
        self._sessions: dict[str, _Session] = {}
        self._unschedulable: dict[str, str] = {}  # model name → why no plan can meet its SLO here
        self._requested: set[str] = set()  # models asked to load (at start or through the API)
        self._executors: dict[tuple[int, str], Executor] = {}
        self._routers: dict[str, DeficitRoundRobin[int]] = {}
        self._backend_worker: dict[int, int] = {}
        self.plan: Plan | None = None
        self.headroom = 1.0
        self._planned_rates: dict[str, float] = {}
        self._plan_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._started = False
        self.replans = 0
        self.requests_moved = 0  # queued requests that followed their session to another slot

    # --------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Load every model, profile it, plan, and start the backends and the control loop."""
        self._loop = asyncio.get_running_loop()
        states = await asyncio.to_thread(self.repository.load_all)
        self._requested = {s.name for s in states}
        for spec in self.repository.ready_specs():
            await self._add_session(spec)
        for worker in self._workers:
            worker.start()
        await self.replan("start")
        self._started = True
        self._control_task = asyncio.create_task(self._control_loop(), name="squishy-control")

    async def stop(self) -> None:
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
        await asyncio.to_thread(self._stop_workers)
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()

    def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.stop()

    # ------------------------------------------------------------------------- ModelService: state
    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        if not self._started:
            return False
        if not self.config.strict_readiness:
            return bool(self._sessions)
        return all(self.model_ready(name) for name in self._requested)

    def repository_index(self, ready_only: bool = False) -> list[ModelState]:
        out = []
        for state in self.repository.index():
            reason = self._unschedulable.get(state.name)
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
        return session_id(spec) in self._routers

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        return self.stats.snapshot(name, version)

    # ------------------------------------------------------------------------ ModelService: infer
    async def infer(self, request: InferRequest) -> InferResponse:
        spec = self.model_spec(request.model_name, request.model_version)
        sid = session_id(spec)
        router = self._routers.get(sid)
        if router is None:
            raise UnavailableError(f"model {spec.name!r} version {spec.version} is not scheduled yet; retry shortly")
        session = self._sessions[sid]
        now_s = time.monotonic()
        arrival_s = request.arrival_s or now_s
        budget_ms = spec.slo_ms
        if request.timeout_us > 0:
            budget_ms = min(budget_ms, request.timeout_us / 1000.0)
        self.rates.record(sid, now_s)
        assert self._loop is not None
        future: asyncio.Future[InferResponse] = self._loop.create_future()
        item = Item(
            deadline_ms=(arrival_s * 1000.0) + budget_ms,
            arrival_ms=arrival_s * 1000.0,
            size=request.batch_size if spec.max_batch_size > 0 else 1,
            priority=self._priority_level(session, request.priority),
            payload=_Pending(future, request, spec, int(arrival_s * 1e9)),
        )
        worker = self._workers[self._route(sid, router)]
        if not worker.submit(sid, item):
            self._count_dropped(spec, [item])
            alone_ms = session.latency_ms(item.size)
            raise UnavailableError(
                f"model {spec.name!r}: the request cannot finish within its {budget_ms:g} ms deadline "
                f"(running it alone takes {alone_ms:.1f} ms here)"
            )
        return await future

    def _route(self, sid: str, router: DeficitRoundRobin[int]) -> int:
        """The slot for a request of ``sid``: deficit round robin on the plan's rates, except that on one
        machine every queue is in sight, so a slot with a clearly shorter backlog (per unit of planned
        rate) takes the request: no slot idles while another of the same session has a backlog."""
        choice = router.pick()
        if len(router.targets) == 1:
            return choice
        best, best_score = choice, (self._workers[choice].backlog(sid) + 1) / router.weight_of(choice)
        for target in router.targets:
            score = (self._workers[target].backlog(sid) + 1) / router.weight_of(target)
            if score < best_score - 1e-9:
                best, best_score = target, score
        return best

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
        specs = await asyncio.to_thread(self.repository.load, name, config_override)
        self._requested.add(name)
        self._unschedulable.pop(name, None)
        for sid in [sid for sid, s in self._sessions.items() if s.spec.name == name]:
            del self._sessions[sid]
        for spec in specs:
            await self._add_session(spec)
        await self.replan("load")

    async def unload_model(self, name: str) -> None:
        await asyncio.to_thread(self.repository.unload, name)
        self._requested.discard(name)
        for sid in [sid for sid, s in self._sessions.items() if s.spec.name == name]:
            del self._sessions[sid]
        await self.replan("unload")

    # ------------------------------------------------------------------------------- sessions
    async def _add_session(self, spec: ModelSpec) -> None:
        sid = session_id(spec)
        try:
            profile = await asyncio.to_thread(self._scheduling_profile, spec)
            _check_feasible(spec, profile, self.config)
        except (SquishyError, OSError) as exc:
            reason = str(exc)
            logger.warning("model %s version %s will not be served: %s", spec.name, spec.version, reason)
            self._unschedulable[spec.name] = reason
            return
        batching = spec.config.dynamic_batching if spec.config is not None else None
        levels = int(batching.priority_levels) if batching is not None else 0
        default = int(batching.default_priority_level) if batching is not None else 0
        self._sessions[sid] = _Session(sid, spec, profile, levels, default or levels)
        self.stats.ensure(spec.name, spec.version)

    def _scheduling_profile(self, spec: ModelSpec) -> Profile:
        """ℓ(b) on one slot, as the scheduler sees it: named by the session, any batch size up to the
        model's max (ONNX Runtime runs any size; in between measured sizes ℓ is interpolated)."""
        max_batch = max(spec.max_batch_size, 1)
        if self.config.executor == "null-zero":
            # No work at all: a token latency keeps every profile rule well defined.
            table = {str(b): 1e-3 for b in range(1, max_batch + 1)}
            return Profile.from_dict({"model": session_id(spec), "device": "null", "batch_ms": table})
        # Measured with every slot running at once, as they will while serving (shared caches and memory).
        measured = self.repository.profile(
            spec,
            self.config.layout.threads_per_slot,
            concurrency=self.config.layout.slots,
            progress=self.config.profile_progress,
        )
        table = {str(b): v for b, v in measured.batch_ms.items() if b <= max_batch}
        if not table:
            raise WorkloadError(f"the profile of {spec.name!r} has no batch size within max_batch_size {max_batch}")
        data = {**measured.to_dict(), "model": session_id(spec), "batch_ms": table, "interpolate": max_batch > 1}
        data.pop("changes", None)
        data.pop("memory_mb", None)  # CPU memory is not the constraint that limits a slot here
        return Profile.from_dict(data)

    # ---------------------------------------------------------------------------------- planning
    async def replan(self, reason: str) -> Plan | None:
        """Plan for the measured rates and install the plan (serialized with every other re-plan)."""
        async with self._plan_lock:
            now_s = time.monotonic()
            measured = self.rates.rates(now_s)
            rates = {sid: max(measured.get(sid, 0.0), self.config.min_rate_per_s) for sid in self._sessions}
            if not rates:
                self._install(None, {})
                return None
            plan, headroom = await asyncio.to_thread(self._fit, rates)
            mapping = self._map_backends(plan)
            await asyncio.to_thread(self._load_executors, plan, mapping)
            moved = self._install(plan, mapping)
            self.metrics.record_replan(reason, moved)
            self._planned_rates = rates
            self.headroom = headroom
            self.epochs.replanned(now_s)
            self.replans += 1
            logger.info(
                "plan (%s): %d backends, %d sessions, headroom %.2fx", reason, plan.num_backends, len(rates), headroom
            )
            return plan

    def _workload(self, rates: dict[str, float], scale: float) -> Workload:
        sessions = tuple(Session(sid, self._sessions[sid].spec.slo_ms, rate * scale) for sid, rate in rates.items())
        settings = Settings(network_ms=self.config.network_ms, profile_inflation=self.config.profile_inflation)
        return Workload(sessions=sessions, settings=settings)

    def _fit(self, rates: dict[str, float]) -> tuple[Plan, float]:
        """The plan for the largest multiple of ``rates`` (up to max_headroom) that fits the slots.

        A geometric search: scale down by 4 until a plan fits, then bisect (on a log scale) to 2%.
        """
        profiles = {sid: s.profile for sid, s in self._sessions.items()}
        slots = self.config.layout.slots

        def plan_at(scale: float) -> Plan:
            return make_plan(self._workload(rates, scale), profiles)

        high = self.config.max_headroom
        best = plan_at(high)
        best_scale = high
        if best.num_backends > slots:
            fitting: tuple[float, Plan] | None = None
            scale = high
            while scale > MIN_HEADROOM:
                scale /= 4
                candidate = plan_at(scale)
                if candidate.num_backends <= slots:
                    fitting = (scale, candidate)
                    break
                high = scale
            if fitting is None:
                # Not even a sliver of the load fits: every session needs its own time on a slot. Serve
                # the smallest plan anyway, several of its backends sharing a slot (SLOs will be missed).
                best_scale, best = scale, plan_at(scale)
                logger.warning("the models need %d backends but there are %d slots", best.num_backends, slots)
            else:
                low, best = fitting
                while high / low > 1.02:
                    middle = math.sqrt(low * high)
                    candidate = plan_at(middle)
                    if candidate.num_backends <= slots:
                        low, best = middle, candidate
                    else:
                        high = middle
                best_scale = low
        if self.plan is not None:
            incremental = replan(self.plan, self._workload(rates, best_scale), profiles).plan
            if incremental.num_backends <= max(slots, best.num_backends):
                return incremental, best_scale
        return best, best_scale

    def _map_backends(self, plan: Plan) -> dict[int, int]:
        """Plan backend id → worker index, keeping each surviving backend on the worker it had."""
        slots = len(self._workers)
        known = self._backend_worker
        mapping = {b.backend_id: known[b.backend_id] for b in plan.backends if b.backend_id in known}
        used = set(mapping.values())
        free = [w for w in range(slots) if w not in used]
        for backend in plan.backends:
            if backend.backend_id not in mapping:
                if free:
                    mapping[backend.backend_id] = free.pop(0)
                else:  # more backends than slots: share the least-loaded slot
                    load = {w: sum(1 for v in mapping.values() if v == w) for w in range(slots)}
                    mapping[backend.backend_id] = min(load, key=lambda w: (load[w], w))
        return mapping

    def _load_executors(self, plan: Plan, mapping: dict[int, int]) -> None:
        """Create (in a worker thread, before the switch) every executor the plan needs that is missing."""
        threads = self.config.layout.threads_per_slot
        kind = "null" if self.config.executor.startswith("null") else self.config.executor
        needed = {(mapping[b.backend_id], a.model) for b in plan.backends for a in b.allocations}
        if self.config.work_stealing:  # every slot can run every planned session's stolen batches
            needed |= {(w, sid) for w in range(len(self._workers)) for _, sid in needed}
        for key in sorted(needed):
            if key not in self._executors:
                session = self._sessions[key[1]]
                null_profile = session.profile if self.config.executor == "null" else None
                self._executors[key] = make_executor(session.spec, kind, threads, null_profile)

    def _install(self, plan: Plan | None, mapping: dict[int, int]) -> int:
        """Switch to ``plan``; returns how many sessions landed on a slot they were not on. Runs on the event
        loop, so no request is routed half-way through."""
        per_worker: dict[int, dict[str, SessionSlot]] = {w: {} for w in range(len(self._workers))}
        weights: dict[str, dict[int, float]] = {}
        budgets: dict[int, float] = {}  # worker → the longest batch it may steal without breaking a promise
        for backend in plan.backends if plan is not None else ():
            worker = mapping[backend.backend_id]
            cycle = backend.duty_cycle_ms or 0.0
            slack = min((a.budget_ms - cycle - a.latency_ms for a in backend.allocations), default=math.inf)
            budgets[worker] = min(budgets.get(worker, math.inf), max(slack, 0.0))
            limits = burst_batches(backend, self._scheduled_latency, lambda sid: self._sessions[sid].profile.max_batch)
            for allocation in backend.allocations:
                sid = allocation.model
                slots = per_worker[worker]
                if sid in slots:  # two backends of one session on one slot (only when slots are short)
                    slots[sid].batch = max(slots[sid].batch, limits[sid])
                else:
                    session = self._sessions[sid]
                    slots[sid] = SessionSlot(
                        session_id=sid,
                        spec=session.spec,
                        executor=self._executors[(worker, sid)],
                        batch=limits[sid],
                        queue=SessionQueue(session.latency_ms, DropPolicy.EARLY),
                    )
                weights.setdefault(sid, {})
                weights[sid][worker] = weights[sid].get(worker, 0.0) + allocation.rate
        self._routers = {
            sid: DeficitRoundRobin(list(w), list(w.values())) for sid, w in weights.items() if sum(w.values()) > 0
        }
        orphans: list[tuple[str, Item]] = []
        moved = 0
        planned = set(weights)
        for index, worker in enumerate(self._workers):
            before = set(worker.session_ids)
            moved += sum(1 for sid in per_worker[index] if sid not in before)
            spare = {sid: self._executors[(index, sid)] for sid in planned if (index, sid) in self._executors}
            budget = budgets.get(index, math.inf) if self.config.work_stealing else 0.0
            orphans.extend(worker.assign(list(per_worker[index].values()), budget, spare))
        self.requests_moved += len(orphans)
        for sid, item in orphans:  # queued requests move with their session
            router = self._routers.get(sid)
            if router is None:
                self._fail(item, UnavailableError(f"model {item.payload.spec.name!r} was unloaded"))
                continue
            worker = self._workers[self._route(sid, router)]
            if not worker.submit(sid, item):
                self._count_dropped(item.payload.spec, [item])
                self._settle([(item.payload.future, _dropped_error(item.payload.spec))])
        self.plan = plan
        self._backend_worker = dict(mapping)
        # Forget executors no slot uses any more (an unloaded model, a session that moved). A batch still
        # running on one keeps its own reference, so it is freed when that batch is done, not under it.
        in_use = {(w, sid) for w, slots in per_worker.items() for sid in slots}
        if self.config.work_stealing:
            in_use |= {(w, sid) for w in range(len(self._workers)) for sid in planned}
        self._executors = {key: executor for key, executor in self._executors.items() if key in in_use}
        if plan is not None:
            self.metrics.set_plan(plan, labels=self._labels())
        return moved

    def _scheduled_latency(self, sid: str, batch: int) -> float:
        """ℓ(batch) as the scheduler counts it (margins included)."""
        return self._sessions[sid].profile.batch_latency_ms(batch) * self.config.profile_inflation

    def _labels(self) -> dict[str, tuple[str, str]]:
        return {sid: (s.spec.name, s.spec.version) for sid, s in self._sessions.items()}

    # ------------------------------------------------------------------------------ control loop
    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_TICK_S)
            try:
                now_s = time.monotonic()
                measured = self.rates.rates(now_s)
                self.metrics.set_session_rates(
                    {SessionKey(sid, s.spec.slo_ms): measured.get(sid, 0.0) for sid, s in self._sessions.items()},
                    labels=self._labels(),
                )
                floored = {sid: max(measured.get(sid, 0.0), self.config.min_rate_per_s) for sid in self._sessions}
                reason = self.epochs.due(now_s, floored, self._planned_rates, self.headroom)
                if reason is not None:
                    await self.replan(str(reason))
            except Exception:  # the control loop must outlive any one failed re-plan
                logger.exception("re-plan failed; keeping the current plan")
                self.epochs.replanned(time.monotonic())

    # ------------------------------------------------------------ BatchSink (worker threads call these)
    def batch_done(
        self, slot: SessionSlot, items: Sequence[Item], outputs: Sequence[dict[str, np.ndarray]], timing: BatchTiming
    ) -> None:
        spec = slot.spec
        finish_ns = time.monotonic_ns()
        started_ns = int(timing.started_ms * 1e6)
        queue_ns = sum(max(0, started_ns - item.payload.arrival_ns) for item in items)
        inputs = sum(item.size for item in items)
        compute_ns = timing.input_ns + timing.infer_ns + timing.output_ns
        self.stats.record_batch(
            spec.name,
            spec.version,
            inputs=inputs,
            requests=len(items),
            queue_ns=queue_ns,
            input_ns=timing.input_ns,
            infer_ns=timing.infer_ns,
            output_ns=timing.output_ns,
        )
        self.metrics.record_batch(spec.name, spec.version, inputs, queue_ns, compute_ns, requests=len(items))
        session = self._sessions.get(slot.session_id)
        if session is not None:
            session.observe(inputs, compute_ns / 1e6)
        settled = []
        for item, output in zip(items, outputs, strict=True):
            pending: _Pending = item.payload
            duration_ns = finish_ns - pending.arrival_ns
            latency_ms = duration_ns / 1e6
            met = finish_ns / 1e6 <= item.deadline_ms
            self.stats.record_success(spec.name, spec.version, duration_ns)
            self.metrics.record_request(spec.name, spec.version, "met" if met else "late", latency_ms)
            response = InferResponse(spec.name, spec.version, output, pending.request.request_id)
            settled.append((pending.future, response))
        self._settle(settled)

    def batch_failed(self, slot: SessionSlot, items: Sequence[Item], error: BaseException) -> None:
        message = error if isinstance(error, InternalError) else InternalError(f"model {slot.spec.name!r}: {error}")
        for item in items:
            self._fail(item, message)

    def dropped(self, slot: SessionSlot, items: Sequence[Item]) -> None:
        self._count_dropped(slot.spec, items)
        error = _dropped_error(slot.spec)
        self._settle([(item.payload.future, error) for item in items])

    def _count_dropped(self, spec: ModelSpec, items: Sequence[Item]) -> None:
        now_ns = time.monotonic_ns()
        for item in items:
            self.stats.record_failure(spec.name, spec.version, now_ns - item.payload.arrival_ns)
            self.metrics.record_request(spec.name, spec.version, "dropped")

    def _fail(self, item: Item, error: BaseException) -> None:
        spec = item.payload.spec
        self.stats.record_failure(spec.name, spec.version, time.monotonic_ns() - item.payload.arrival_ns)
        self.metrics.record_request(spec.name, spec.version, "failed")
        self._settle([(item.payload.future, error)])

    def _settle(self, outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
        """Resolve futures on the event loop (callable from any thread)."""
        if not outcomes or self._loop is None:
            return
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(_resolve, outcomes)


def _resolve(outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in outcomes:
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


def queue_latency(profile: Profile) -> Callable[[int], float]:
    """ℓ(n) for the batching policy: the profile's latency, extended linearly past its largest size
    (a client may send more rows in one request than the plan's batch)."""
    largest = profile.max_batch
    per_input = profile.latency_ms(largest) / largest

    def latency_ms(inputs: int) -> float:
        if inputs <= largest:
            return profile.batch_latency_ms(inputs)
        return per_input * inputs

    return latency_ms


def _check_feasible(spec: ModelSpec, profile: Profile, config: ServingConfig) -> None:
    budget = spec.slo_ms - config.network_ms
    need = 2 * profile.latency_ms(profile.min_batch) * config.profile_inflation
    if budget < need:
        raise WorkloadError(
            f"SLO {spec.slo_ms:g} ms is below what it takes here: 2 x ℓ(1) = {need:.1f} ms plus "
            f"{config.network_ms:g} ms of network margin (raise slo_ms in its config)"
        )

"""One simulated run: sources send requests, frontends route them by the plan, backends batch and run
them, complex queries fan out stage by stage, and (optionally) the control loop re-plans.

Requests move in numpy chunks: arrivals are generated for half a second at a time, routed in bulk, and
held on the simulated network until their arrival time; a backend takes every request that has arrived
when it next looks at its queue. Events are per batch, not per request, and nothing here decides which
requests batch or drop: that is ``squishy.batching``'s job, as on a real backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from squishy.batching.limits import burst_batches
from squishy.batching.policies import ClipperDispatch, Dispatch, SquishyDispatch, TfServingDispatch
from squishy.batching.queue import ArraySessionQueue
from squishy.profiles import Profile
from squishy.scheduler import Allocation, Backend, Plan, Session, Settings, Workload
from squishy.scheduler.demand import prefix_demand, scheduled_profile
from squishy.scheduler.queries import stage_names
from squishy.scheduler.replan import replan
from squishy.sim.arrivals import ArrivalSpec, ArrivalStream, RateSchedule
from squishy.sim.backend import CLASS_BITS, CLASS_MASK, AllocationRuntime, BackendRuntime, ExecModel, InFlight
from squishy.sim.control import ControlConfig, RateEstimator, ReplanPolicy
from squishy.sim.engine import PRIORITY_ARRIVALS, PRIORITY_BACKEND, PRIORITY_CONTROL, PRIORITY_SWITCH, Engine
from squishy.sim.frontend import DeficitRoundRobin, split_by_target
from squishy.sim.metrics import Metrics
from squishy.sim.systems import SYSTEMS, SystemSpec, planning_profiles

# A sampled batch latency is never below this share of its mean (a normal tail must not go negative).
MIN_LATENCY_SHARE = 0.1


@dataclass(frozen=True)
class SimConfig:
    duration_s: float = 30.0
    warmup_s: float = 2.0
    seed: int = 0
    network_ms: float = 1.0  # one way, frontend → backend, and between query stages
    model_load_ms: float = 2000.0  # before a moved session serves on its new backend
    arrivals: ArrivalSpec = field(default_factory=ArrivalSpec)
    rate_schedule: RateSchedule = field(default_factory=RateSchedule)
    scale: float = 1.0  # every source's rate is multiplied by this
    chunk_ms: float = 500.0  # arrivals are generated and routed this far ahead
    tick_ms: float = 1000.0  # control-loop and time-series resolution
    control: ControlConfig | None = None  # None: the initial plan serves the whole run
    # Stop once more than this share of the run's expected requests is bad: a load search only needs
    # to know that the target is missed, not by how much (None: always run to the end).
    stop_bad_share: float | None = None
    log_batches: bool = False  # keep every batch and drop in ``Simulation.batch_log`` (tests, small runs)


@dataclass
class RequestClass:
    """Requests of one plain session, or of one stage of one query."""

    index: int
    model: str
    source: int  # the top-level source (session or query) it counts for
    slo_ms: float  # the session's SLO, or the query's end-to-end SLO
    pre_ms: float
    post_ms: float
    query: int = -1  # index into the workload's queries, -1 for a plain session
    stage_name: str = ""
    children: list[tuple[int, float]] = field(default_factory=list)  # (class index, gamma)
    stage_depth_index: int = 0


class QueryTable:
    """Per-query state while its stages run: outstanding stage requests, latest reply, failure."""

    def __init__(self) -> None:
        size = 1 << 16
        self.send_ms = np.zeros(size)
        self.slo_ms = np.zeros(size)
        self.source = np.zeros(size, dtype=np.int32)
        self.outstanding = np.zeros(size, dtype=np.int64)
        self.last_reply_ms = np.zeros(size)
        self.failed = np.zeros(size, dtype=bool)
        self.count = 0

    def new(self, source: int, sends_ms: np.ndarray, slo_ms: float) -> np.ndarray:
        count = len(sends_ms)
        while self.count + count > len(self.send_ms):
            for name in ("send_ms", "slo_ms", "source", "outstanding", "last_reply_ms", "failed"):
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


class Simulation:
    def __init__(
        self,
        workload: Workload,
        profiles: Mapping[str, Profile],
        plan: Plan,
        system: SystemSpec | str = "squishy",
        config: SimConfig | None = None,
    ) -> None:
        self.system = SYSTEMS[system] if isinstance(system, str) else system
        self.config = config or SimConfig()
        self.workload = workload
        self.profiles = dict(profiles)
        self.engine = Engine()
        cfg = self.config
        self.end_ms = cfg.duration_s * 1000.0
        self.overlap = self.system.overlap
        seed = cfg.seed
        self.latency_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        self.fanout_rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))

        # Sources: plain sessions, then queries.
        names = [f"{s.model}@{s.slo_ms:g}ms" for s in workload.sessions] + [f"query:{q.name}" for q in workload.queries]
        base_rates = [s.rate for s in workload.sessions] + [q.rate for q in workload.queries]
        self.base_rates = np.asarray(base_rates, dtype=float)
        self.streams = [
            ArrivalStream(
                rate * cfg.scale,
                cfg.arrivals,
                cfg.rate_schedule,
                np.random.default_rng([seed, 1, index]),
                trace_time_scale=cfg.scale,
            )
            for index, rate in enumerate(base_rates)
        ]
        self.metrics = Metrics(names, cfg.warmup_s * 1000.0, self.end_ms, cfg.tick_ms)
        self.classes: list[RequestClass] = []
        for index, session in enumerate(workload.sessions):
            self._add_class(session.model, index, session.slo_ms)
        self.root_class: list[int] = []
        for q_index, query in enumerate(workload.queries):
            source = len(workload.sessions) + q_index
            first = len(self.classes)
            named = stage_names(query.root)
            for name, stage, parent, _ in named:
                cls = self._add_class(stage.model, source, query.slo_ms, query=q_index, stage_name=name)
                if parent >= 0:
                    self.classes[first + parent].children.append((cls.index, stage.gamma))
            self.root_class.append(first)
        if len(self.classes) > CLASS_MASK:
            raise ValueError(f"too many request classes ({len(self.classes)}) for the tag encoding")
        self.stage_served = np.zeros(len(self.classes), dtype=np.int64)
        self.stage_late = np.zeros(len(self.classes), dtype=np.int64)
        self.stage_dropped = np.zeros(len(self.classes), dtype=np.int64)
        self.queries = QueryTable()

        self.backends: dict[int, BackendRuntime] = {}
        self.routes: list[tuple[list[AllocationRuntime], DeficitRoundRobin] | None] = []
        self.stage_deadline_offset_ms = np.zeros(len(self.classes))
        self.plan = plan
        self.pending_plan: Plan | None = None
        self.retiring: list[BackendRuntime] = []
        # (backend id, start ms, finish ms, send times, model) per batch; ("drop", ms, send times) per drop.
        self.batch_log: list[tuple[Any, ...]] = []
        self._exec_cache: dict[tuple[Any, ...], ExecModel] = {}
        self._planning_profiles = planning_profiles(self.system, self.profiles)
        self._scheduled_cache: dict[tuple[Any, ...], Profile] = {}
        self._table_cache: dict[tuple[Any, ...], np.ndarray] = {}

        # Control loop and time series.
        self.control = cfg.control
        initial = self.base_rates * cfg.scale * cfg.rate_schedule.factor_at(0.0)
        self.estimator = RateEstimator(initial, cfg.control.ewma_s if cfg.control else 10.0)
        self.policy = (
            ReplanPolicy(cfg.control, initial * (cfg.control.headroom if cfg.control else 1.0)) if cfg.control else None
        )
        ticks = math.ceil(self.end_ms / cfg.tick_ms) + 2
        self._source_series = np.zeros((len(base_rates), ticks), dtype=np.int64)  # sends per source per tick
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
            query=query,
            stage_name=stage_name,
        )
        self.classes.append(cls)
        return cls

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
                per_request = max(p.preprocess_ms + p.postprocess_ms for p in member_profiles)
            size = trunk.max_batch
            trunk_ms = _table(trunk, size)
            suffixes = tuple(np.maximum(0.0, _table(p, size) - trunk_ms) for p in member_profiles)
            slots = {c.index: members.index(c.model) for c in self.classes if c.model in members}
            plain = trunk_ms + np.arange(size + 1) * per_request
            exe = ExecModel(plain, _std_table(trunk, size), slots, trunk_ms, suffixes, per_request)
        else:
            profile = self.profiles[allocation.model]
            if not self.overlap:
                per_request = profile.preprocess_ms + profile.postprocess_ms
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
            sessions = [Session(m.model, m.slo_ms, m.rate) for m in allocation.members]
            group = prefix_demand(allocation.model, sessions, self.profiles, Settings()).profile
            size = exe.max_batch
            cached = np.zeros(size + 1)
            for n in range(1, size + 1):
                batch = group.smallest_allowed_at_least(n)
                cached[n] = group.latency_ms(batch) if batch is not None else cached[n - 1]
            cached = cached + np.arange(size + 1) * exe.device_per_request_ms
            self._table_cache[key] = cached
        return cached

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
            settings = self.workload.settings
            if allocation.members:
                sessions = [Session(m.model, m.slo_ms, m.rate) for m in allocation.members]
                cached = prefix_demand(allocation.model, sessions, self._planning_profiles, settings).profile
            else:
                cached = scheduled_profile(self._planning_profiles[allocation.model], settings)
            self._scheduled_cache[key] = cached
        return cached

    def _burst_limits(self, backend: Backend) -> list[int]:
        """Per allocation, the largest batch it may run in one turn: ``squishy.batching.limits.burst_batches``,
        exactly as the runtime applies it (the plan's batch on backends without a duty cycle)."""
        allocations = backend.allocations
        if self.system.dispatch != "squishy":
            return [a.batch for a in allocations]
        # burst_batches names allocations by model; two sessions of one model (different SLOs) may share
        # a backend, so each allocation gets a unique name here.
        named = replace(backend, allocations=tuple(replace(a, model=str(i)) for i, a in enumerate(allocations)))

        def latency_ms(name: str, batch: int) -> float:
            profile = self._scheduled(allocations[int(name)])
            return profile.batch_latency_ms(batch) if batch <= profile.max_batch else math.inf

        def max_batch(name: str) -> int:
            allocation = allocations[int(name)]
            return min(self._scheduled(allocation).max_batch, self._exec_model(allocation).max_batch)

        limits = burst_batches(named, latency_ms, max_batch)
        return [limits[str(i)] for i in range(len(allocations))]

    def _new_allocation(self, allocation: Allocation) -> AllocationRuntime:
        exe = self._exec_model(allocation)
        dispatch, batch = self._dispatch(allocation, exe)
        queue = ArraySessionQueue(self._drop_table(allocation, exe), self.system.drop)
        return AllocationRuntime(allocation.key, batch, allocation.slo_ms, queue, dispatch, exe)

    # ------------------------------------------------------------------------------- plans
    def _install(self, plan: Plan) -> None:
        """Make ``plan`` the running plan now; queued requests follow their sessions."""
        now = self.engine.now_ms
        moving: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # Requests not yet at a backend are routed afresh under the new plan's weights.
        for backend in self.backends.values():
            for allocation in backend.allocations:
                arrivals, deadlines, tags = allocation.take_pending_after(now)
                if len(tags):
                    moving.append((arrivals, deadlines, tags))
        forwarded: list[tuple[np.ndarray, np.ndarray]] = []  # (deadlines, tags) queued on a removed allocation

        def evict(allocation: AllocationRuntime) -> None:
            deadlines, _, tags, _, p_deadlines, p_tags = allocation.drain_all()
            if len(tags):
                forwarded.append((deadlines, tags))
            if len(p_tags):
                forwarded.append((p_deadlines, p_tags))

        installed: dict[int, BackendRuntime] = {}
        for backend in plan.backends:
            runtime = self.backends.get(backend.backend_id)
            existing = {a.key: a for a in runtime.allocations} if runtime else {}
            allocations = []
            limits = self._burst_limits(backend)
            for allocation, limit in zip(backend.allocations, limits, strict=True):
                kept = existing.pop(allocation.key, None)
                fresh = self._new_allocation(allocation)
                fresh.batch = limit
                if kept is not None:
                    # Same session, same backend: keep its queue and network buffer, take the new sizing.
                    kept.batch, kept.dispatch, kept.exe = fresh.batch, fresh.dispatch, fresh.exe
                    kept.queue.latency_table_ms = fresh.queue.latency_table_ms
                    allocations.append(kept)
                else:
                    allocations.append(fresh)
            for gone in existing.values():
                evict(gone)
            if runtime is None:
                runtime = BackendRuntime(backend.backend_id, backend.duty_cycle_ms, allocations)
            else:
                runtime.allocations = allocations
                runtime.duty_cycle_ms = backend.duty_cycle_ms
                runtime.round_robin %= max(1, len(allocations))
            for allocation_runtime in allocations:
                allocation_runtime.backend = runtime
            installed[backend.backend_id] = runtime
        for backend_id, runtime in self.backends.items():
            if backend_id not in installed:
                for allocation in runtime.allocations:
                    evict(allocation)
                runtime.allocations = []
                runtime.retired = True
        self.backends = installed
        self.plan = plan
        self._build_routes(plan)
        for arrivals, deadlines, tags in moving:
            self._route_mixed(arrivals, deadlines, tags)
        for deadlines, tags in forwarded:
            self._route_mixed(np.full(len(tags), now + self.config.network_ms), deadlines, tags)
        for runtime in self.backends.values():
            if runtime.inflight is None:
                self._wake(runtime, runtime.next_event_ms(now))

    def _build_routes(self, plan: Plan) -> None:
        lookup = {
            (b.backend_id, a.key): r
            for b in plan.backends
            for a, r in zip(b.allocations, self.backends[b.backend_id].allocations, strict=True)
        }
        routes: list[tuple[list[AllocationRuntime], DeficitRoundRobin] | None] = []
        for cls in self.classes:
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
            targets = [(lookup[(b.backend_id, a.key)], rate) for b, a, rate in plan.routes(cls.model, slo) if rate > 0]
            if not targets:
                routes.append(None)
                continue
            routes.append(([t for t, _ in targets], DeficitRoundRobin([r for _, r in targets])))
        self.routes = routes
        # Allocations that only ever see one request class skip the per-batch class split.
        seen: dict[int, set[int]] = {}
        for cls, route in zip(self.classes, routes, strict=True):
            for target in route[0] if route else []:
                seen.setdefault(id(target), set()).add(cls.index)
        for runtime in self.backends.values():
            for allocation in runtime.allocations:
                classes = seen.get(id(allocation), set())
                allocation.single_class = next(iter(classes)) if len(classes) == 1 else -1

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
        route = self.routes[cls_index]
        if route is None:  # no backend serves it (a session the plan thinks idle): error replies
            self._dropped(deadlines, tags)
            return
        targets, drr = route
        if len(targets) == 1:
            self._deliver(targets[0], arrivals, deadlines, tags)
            return
        chosen = drr.take(len(tags))
        for target, positions in zip(targets, split_by_target(chosen, len(targets)), strict=True):
            if len(positions):
                self._deliver(target, arrivals[positions], deadlines[positions], tags[positions])

    def _route_mixed(self, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray) -> None:
        order = np.argsort(arrivals, kind="stable")
        arrivals, deadlines, tags = arrivals[order], deadlines[order], tags[order]
        classes = tags & CLASS_MASK
        for cls_index in np.unique(classes).tolist():
            mask = classes == cls_index
            self._route(cls_index, arrivals[mask], deadlines[mask], tags[mask])

    def _deliver(
        self, allocation: AllocationRuntime, arrivals: np.ndarray, deadlines: np.ndarray, tags: np.ndarray
    ) -> None:
        allocation.add_pending(arrivals, deadlines, tags)
        backend = allocation.backend
        assert backend is not None
        if backend.inflight is None and arrivals[0] < backend.wake_ms:
            self._wake(backend, float(arrivals[0]))

    def _wake(self, backend: BackendRuntime, time_ms: float) -> None:
        if time_ms == math.inf or backend.retired:
            return
        backend.version += 1
        backend.wake_ms = max(time_ms, self.engine.now_ms)
        self.engine.schedule(backend.wake_ms, PRIORITY_BACKEND, self._backend_event, backend, backend.version)

    # ----------------------------------------------------------------------------- backends
    def _backend_event(self, backend: BackendRuntime, version: int) -> None:
        if version != backend.version:
            return  # superseded by a later wake-up
        backend.wake_ms = math.inf
        inflight = backend.inflight
        if inflight is not None:
            backend.inflight = None
            self._complete(inflight)
        if not backend.retired:
            self._step(backend)

    def _step(self, backend: BackendRuntime) -> None:
        now = self.engine.now_ms
        while True:
            allocation = backend.choose(now)
            if allocation is None:
                break
            limit = allocation.dispatch.batch_limit(allocation.batch)
            dropped_deadlines, dropped_tags, deadlines, _, tags = allocation.queue.form_batch(now, limit)
            if len(dropped_tags):
                self._dropped(dropped_deadlines, dropped_tags)
            count = len(tags)
            if count == 0:
                continue
            exe = allocation.exe
            mean = exe.mean_ms(count, tags & CLASS_MASK) if exe.member_slot is not None else float(exe.table_ms[count])
            std = float(exe.std_table_ms[count])
            duration = (
                mean if std == 0.0 else max(mean * MIN_LATENCY_SHARE, mean + std * self.latency_rng.standard_normal())
            )
            allocation.dispatch.observe(count, duration, allocation.slo_ms)
            finish = now + duration
            backend.inflight = InFlight(allocation, deadlines, tags, now, finish)
            if self.config.log_batches:
                self.batch_log.append(
                    (backend.backend_id, now, finish, self._send_times(deadlines, tags), allocation.key.model)
                )
            backend.busy_ms += duration
            self._busy_total_ms += duration
            backend.version += 1
            backend.wake_ms = finish
            self.engine.schedule(finish, PRIORITY_BACKEND, self._backend_event, backend, backend.version)
            return
        self._wake(backend, backend.next_event_ms(now))

    # ------------------------------------------------------------------------------ outcomes
    def _complete(self, batch: InFlight) -> None:
        single = batch.allocation.single_class
        if single >= 0:
            self._served(single, batch.deadlines, batch.tags, batch.finish_ms)
            return
        tags = batch.tags
        classes = tags & CLASS_MASK
        first = int(classes[0])
        if classes[-1] == first and (len(classes) < 3 or bool((classes == first).all())):
            self._served(first, batch.deadlines, tags, batch.finish_ms)
            return
        for cls_index in np.unique(classes).tolist():
            mask = classes == cls_index
            self._served(cls_index, batch.deadlines[mask], tags[mask], batch.finish_ms)

    def _served(self, cls_index: int, deadlines: np.ndarray, tags: np.ndarray, finish_ms: float) -> None:
        cls = self.classes[cls_index]
        reply = finish_ms + (cls.post_ms if self.overlap else 0.0)
        if cls.query < 0:
            # One session's requests in deadline order: the late ones come first.
            sends = deadlines - cls.slo_ms
            late_count = int(deadlines.searchsorted(reply, side="left"))
            self.metrics.add_served_sorted(cls.source, sends, reply - sends, late_count)
            return
        late = deadlines < reply
        self.stage_served[cls_index] += len(tags)
        self.stage_late[cls_index] += int(np.count_nonzero(late))
        qids = (tags >> CLASS_BITS) - 1
        table = self.queries
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
        self._settle(qids, spawned - 1)

    def _send_times(self, deadlines: np.ndarray, tags: np.ndarray) -> list[float]:
        out = []
        for deadline, tag in zip(deadlines.tolist(), tags.tolist(), strict=True):
            cls = self.classes[tag & CLASS_MASK]
            out.append(deadline - cls.slo_ms if cls.query < 0 else float(self.queries.send_ms[(tag >> CLASS_BITS) - 1]))
        return out

    def _dropped(self, deadlines: np.ndarray, tags: np.ndarray) -> None:
        if self.config.log_batches:
            self.batch_log.append(("drop", self.engine.now_ms, self._send_times(deadlines, tags)))
        classes = tags & CLASS_MASK
        for cls_index in np.unique(classes).tolist() if len(classes) > 1 else [int(classes[0])]:
            mask = classes == cls_index if len(classes) > 1 else slice(None)
            cls = self.classes[cls_index]
            if cls.query < 0:
                self.metrics.add_dropped(cls.source, deadlines[mask] - cls.slo_ms)
                continue
            qids = (tags[mask] >> CLASS_BITS) - 1
            self.stage_dropped[cls_index] += len(qids)
            self.queries.failed[qids] = True
            self._settle(qids, np.full(len(qids), -1, dtype=np.int64))

    def _settle(self, qids: np.ndarray, change: np.ndarray) -> None:
        """Apply each stage request's change to its query's outstanding count; finish queries at zero."""
        table = self.queries
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
        network = self.config.network_ms
        n_sessions = len(self.workload.sessions)
        for source, stream in enumerate(self.streams):
            sends = stream.until(end)
            if len(sends) == 0:
                continue
            self.metrics.add_sent(source, sends)
            ticks = (sends // self.config.tick_ms).astype(np.int64)
            first_tick = int(ticks[0])
            counted = np.bincount(ticks - first_tick)
            self._source_series[source, first_tick : first_tick + len(counted)] += counted
            if source < n_sessions:
                cls = self.classes[source]
                arrivals = sends + (network + (cls.pre_ms if self.overlap else 0.0))
                tags = np.full(len(sends), source, dtype=np.int64)
                self._route(source, arrivals, sends + cls.slo_ms, tags)
            else:
                q_index = source - n_sessions
                query = self.workload.queries[q_index]
                qids = self.queries.new(source, sends, query.slo_ms)
                root = self.classes[self.root_class[q_index]]
                arrivals = sends + (network + (root.pre_ms if self.overlap else 0.0))
                tags = ((qids + 1) << CLASS_BITS) | root.index
                self._route(root.index, arrivals, sends + self.stage_deadline_offset_ms[root.index], tags)
        if end < self.end_ms:
            self.engine.schedule(end, PRIORITY_ARRIVALS, self._arrivals, end)

    # ------------------------------------------------------------------------------- control
    def _tick(self, time_ms: float) -> None:
        tick_s = self.config.tick_ms / 1000.0
        in_use = {b.backend_id for b in self.plan.backends}
        if self.pending_plan is not None:
            in_use |= {b.backend_id for b in self.pending_plan.backends}
        self.backend_series.append(len(in_use))
        busy = self._busy_total_ms - self._busy_at_tick_ms
        self._busy_at_tick_ms = self._busy_total_ms
        self.utilization_series.append(round(busy / (len(in_use) * self.config.tick_ms), 6) if in_use else 0.0)
        # Arrivals are generated a chunk ahead; the tick that just ended is complete.
        counts = self._source_series[:, round(time_ms / self.config.tick_ms) - 1]
        self.estimator.update(counts, tick_s)
        if self._bad_limit is not None:
            bad = int(self.metrics.late.sum() + self.metrics.dropped.sum())
            if bad > self._bad_limit:
                self.stopped_early = True
                self.engine.stop()
                return
        if self.policy is not None and self.pending_plan is None:
            reason = self.policy.due(time_ms / 1000.0, self.estimator.rates)
            if reason is not None:
                self._replan(reason)
        if time_ms + self.config.tick_ms <= self.end_ms:
            self.engine.schedule(
                time_ms + self.config.tick_ms, PRIORITY_CONTROL, self._tick, time_ms + self.config.tick_ms
            )

    def _replan(self, reason: str) -> None:
        assert self.control is not None and self.policy is not None
        now = self.engine.now_ms
        rates = self.estimator.rates * self.control.headroom
        n_sessions = len(self.workload.sessions)
        workload = replace(
            self.workload,
            sessions=tuple(
                replace(s, rate=float(r)) for s, r in zip(self.workload.sessions, rates[:n_sessions], strict=True)
            ),
            queries=tuple(
                replace(q, rate=float(r)) for q, r in zip(self.workload.queries, rates[n_sessions:], strict=True)
            ),
        )
        result = replan(self.plan, workload, self.profiles)
        self.policy.replanned(now / 1000.0, rates)
        delay = self.config.model_load_ms if (result.moved or result.added) else 0.0
        self.replans.append(
            {
                "time_s": round(now / 1000.0, 3),
                "reason": reason,
                "backends": result.plan.num_backends,
                "moved": len(result.moved),
                "added": len(result.added),
                "released": len(result.released),
                "lower_bound": round(result.plan.lower_bound, 3),
            }
        )
        self.pending_plan = result.plan
        self.engine.schedule(now + delay, PRIORITY_SWITCH, self._switch, result.plan)

    def _switch(self, plan: Plan) -> None:
        self.pending_plan = None
        self._install(plan)

    # ---------------------------------------------------------------------------------- run
    def run(self) -> SimResult:
        self._install(self.plan)
        self.engine.schedule(0.0, PRIORITY_ARRIVALS, self._arrivals, 0.0)
        self.engine.schedule(self.config.tick_ms, PRIORITY_CONTROL, self._tick, self.config.tick_ms)
        self.engine.run()
        return self.result()

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
        summary = {
            "system": self.system.name,
            "scale": self.config.scale,
            "offered_rate": round(offered, 6),
            "overall": overall,
            "sessions": metrics.per_source(),
            "query_stages": stages,
            "backends_initial": self.plan.num_backends if not self.replans else None,
            "requests_resolved": metrics.served_total,
            "stopped_early": self.stopped_early,
            "events": self.engine.events_run,
        }
        return SimResult(summary=summary, metrics=self)


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

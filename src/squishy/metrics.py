"""Prometheus metrics: Triton's names (so existing dashboards work) plus squishy's SLO and plan view.

One ``ServerMetrics`` per server, over its own ``CollectorRegistry``. The serving core reports what
happens through the ``record_*`` / ``set_*`` methods, which are thread-safe and cheap (a dict lookup
and a few locked additions), so worker threads may call them per batch and per request. The frontend
serves ``exposition()`` on ``GET /metrics`` (port 8002 by default).

Who records what:

- the serving core calls ``record_request`` once for every request it accepted (outcome ``met``,
  ``late``, ``dropped`` or ``failed``), ``record_batch`` once per executed batch, ``set_pending`` when
  its queues change, and the control loop calls ``set_plan`` / ``set_session_rates`` each epoch;
- the frontend calls ``record_request(..., "failed", reason="OTHER")`` only for requests it rejected
  before handing them to the core (bad input for a known model), so nothing is counted twice; its door
  calls ``record_shed`` for requests shed before the core, ``set_pending`` and ``observe_loop_lag``.

Metric families (labels in braces):

Triton-compatible (counters are cumulative, durations in microseconds, exactly Triton's names without a
``_total`` suffix):
  ``nv_inference_request_success{model,version}``  requests that completed (met or late)
  ``nv_inference_request_failure{model,version,reason}``  reason: REJECTED (dropped: could not meet its
      deadline), BACKEND (the executor failed), CANCELED, OTHER (e.g. invalid input)
  ``nv_inference_count{model,version}``  inputs inferred (a batch of 8 counts 8)
  ``nv_inference_exec_count{model,version}``  batches executed
  ``nv_inference_pending_request_count{model,version}``  (gauge) requests admitted, not answered yet
  ``nv_inference_request_duration_us{model,version}``  end-to-end time of successful requests
  ``nv_inference_queue_duration_us{model,version}``  time requests waited in queues
  ``nv_inference_compute_infer_duration_us{model,version}``  compute time, charged to every request of a
      batch as Triton does
squishy's own:
  ``squishy_slo_met_total``, ``squishy_slo_late_total``, ``squishy_dropped_total`` ``{model,version}``
  ``squishy_request_latency_ms{model,version}``  histogram of end-to-end latency of completed requests
  ``squishy_door_shed_total{model,version,reason}``  requests shed at the front door (deadline, queue)
  ``squishy_observed_slowdown{model,version}``  (gauge) observed ÷ profiled batch latency, smoothed
  ``squishy_application_fan_out{application,parent,child}``  (gauge) measured γ of an application's edge
  ``squishy_stage_budget_ms{composite,stage}``  (gauge) a composite stage's share of its SLO
  ``squishy_stage_rate{composite,stage}``  (gauge) the calls/s that split was made for
  ``squishy_batch_retries_total{model,version}``  failed batches whose requests were retried one by one
  ``squishy_hung_batches_total{model,version}``  batches the watchdog gave up on (the model is then
      unavailable until it is loaded again)
  ``squishy_slots_lost_total{slot}``  slots whose process died (a Ray actor or its node); the plan then
      uses the others
  ``squishy_event_loop_lag_ms``  histogram of the serving loop's lag (how late a 5 ms timer ran)
  ``squishy_batch_size{model,version}``  histogram of executed batch sizes
  ``squishy_plan_backends``  backends in the current plan
  ``squishy_plan_duty_cycle_ms{backend}``, ``squishy_plan_occupancy{backend}``
  ``squishy_plan_batch{model,version,slo_ms,backend}``  batch size the plan gives a session on a backend
  ``squishy_plan_rate{model,version,slo_ms}``  requests/s the plan provisions for a session
  ``squishy_plan_backends_required``  backends the measured load needs at the target headroom (above
      ``squishy_plan_backends`` when capacity binds: what an autoscaler should add)
  ``squishy_plan_headroom``  the multiple of the measured load the plan is made for (< 1: capacity binds)
  ``squishy_capacity_shortfall_rps{model,version}``  measured requests/s the plan does not admit
  ``squishy_plan_prefix_group{model,version,prefix}``  1 for each model the plan runs in a prefix group
      (``prefix``: the shared trunk; its batches run the trunk once for all of the group's models)
  ``squishy_session_rate{model,version,slo_ms}``  measured requests/s of a session
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from squishy.scheduler.plan import Plan
    from squishy.scheduler.workload import SessionKey

Outcome = Literal["met", "late", "dropped", "failed"]

# End-to-end latency buckets (ms): dense around the 1–1000 ms SLOs squishy schedules for, so the share
# of requests under any SLO in that range can be read off a histogram_quantile/bucket ratio.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150, 200, 250, 300, 400, 500, 600,
    750, 1000, 1500, 2000, 5000,
)  # fmt: skip
LOOP_LAG_BUCKETS_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)
# Batch sizes: every power of two and the midpoints between them, up to the largest batches profiled.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _PlainCounters(Collector):
    """Counters exposed under their exact names (prometheus_client would append ``_total``).

    Families are yielded as ``unknown`` (text format: ``untyped``); ``ServerMetrics.exposition`` then
    declares them ``counter`` as Triton does.
    """

    def __init__(self, families: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
        self._families = dict(families)  # name → (help, label names)
        self._values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in families}
        self._lock = threading.Lock()

    def inc(self, name: str, labels: tuple[str, ...], amount: float) -> None:
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0.0) + amount

    def ensure(self, name: str, labels: tuple[str, ...]) -> None:
        """Expose a series at 0 before its first event, so rate() sees the start."""
        with self._lock:
            self._values[name].setdefault(labels, 0.0)

    def value(self, name: str, labels: tuple[str, ...]) -> float:
        with self._lock:
            return self._values[name].get(labels, 0.0)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        for name, (doc, label_names) in self._families.items():
            metric = Metric(name, doc, "unknown")
            for labels, value in snapshot[name].items():
                metric.add_sample(name, dict(zip(label_names, labels, strict=True)), value)
            yield metric


@dataclass(frozen=True)
class _PlanSnapshot:
    backends: int
    duty_cycle_ms: tuple[tuple[str, float], ...]  # (backend, ms)
    occupancy: tuple[tuple[str, float], ...]
    batch: tuple[tuple[tuple[str, str, str, str], int], ...]  # ((model, version, slo_ms, backend), batch)
    rate: tuple[tuple[tuple[str, str, str], float], ...]  # ((model, version, slo_ms), requests/s)
    prefix: tuple[tuple[tuple[str, str, str], float], ...] = ()  # ((model, version, trunk), 1)


class _PlanCollector(Collector):
    """The current plan as gauges, swapped atomically so a scrape never sees half of two plans."""

    def __init__(self) -> None:
        self.plan = _PlanSnapshot(0, (), (), (), ())
        self.session_rates: tuple[tuple[tuple[str, str, str], float], ...] = ()

    def collect(self) -> Iterator[Metric]:
        plan, rates = self.plan, self.session_rates
        metric = Metric("squishy_plan_backends", "Backends in the current plan", "gauge")
        metric.add_sample("squishy_plan_backends", {}, plan.backends)
        yield metric
        yield _gauge("squishy_plan_duty_cycle_ms", "Duty cycle of each backend (ms)", ("backend",), plan.duty_cycle_ms)
        yield _gauge("squishy_plan_occupancy", "Busy share of each backend's duty cycle", ("backend",), plan.occupancy)
        yield _gauge(
            "squishy_plan_batch",
            "Batch size the plan gives a session on a backend",
            ("model", "version", "slo_ms", "backend"),
            plan.batch,
        )
        yield _gauge(
            "squishy_plan_rate",
            "Requests/s the plan provisions for a session",
            ("model", "version", "slo_ms"),
            plan.rate,
        )
        yield _gauge(
            "squishy_plan_prefix_group",
            "1 for each model the plan runs in a prefix group (its trunk batched once for the group)",
            ("model", "version", "prefix"),
            plan.prefix,
        )
        yield _gauge("squishy_session_rate", "Measured requests/s of a session", ("model", "version", "slo_ms"), rates)


def _gauge(name: str, doc: str, label_names: tuple[str, ...], series: Iterable[tuple[object, float]]) -> Metric:
    metric = Metric(name, doc, "gauge")
    for labels, value in series:
        values = labels if isinstance(labels, tuple) else (labels,)
        metric.add_sample(name, dict(zip(label_names, (str(v) for v in values), strict=True)), float(value))
    return metric


def _slo_label(slo_ms: float) -> str:
    return f"{slo_ms:g}"


@dataclass
class _ModelSeries:
    """The labelled children of one (model, version), looked up once and reused."""

    labels: tuple[str, str]
    slo_met: Counter
    slo_late: Counter
    dropped: Counter
    latency_ms: Histogram
    batch_size: Histogram
    pending: Gauge


class ServerMetrics:
    """All of a server's metrics. Thread-safe; see the module docstring for names and who records what."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        latency_buckets_ms: Iterable[float] = LATENCY_BUCKETS_MS,
        batch_size_buckets: Iterable[float] = BATCH_SIZE_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        mv = ("model", "version")
        self._triton = _PlainCounters(
            {
                "nv_inference_request_success": ("Number of successful inference requests, all batch sizes", mv),
                "nv_inference_request_failure": (
                    "Number of failed inference requests, all batch sizes",
                    ("model", "version", "reason"),
                ),
                "nv_inference_count": ("Number of inferences performed (does not include cached requests)", mv),
                "nv_inference_exec_count": ("Number of model executions performed", mv),
                "nv_inference_request_duration_us": ("Cumulative inference request duration in microseconds", mv),
                "nv_inference_queue_duration_us": ("Cumulative inference queuing duration in microseconds", mv),
                "nv_inference_compute_infer_duration_us": (
                    "Cumulative compute inference duration in microseconds",
                    mv,
                ),
            }
        )
        self.registry.register(self._triton)
        self._pending = Gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            mv,
            registry=self.registry,
        )
        self._slo_met = Counter("squishy_slo_met", "Requests answered within their SLO", mv, registry=self.registry)
        self._slo_late = Counter("squishy_slo_late", "Requests answered after their SLO", mv, registry=self.registry)
        self._dropped = Counter(
            "squishy_dropped", "Requests dropped because they could not meet their deadline", mv, registry=self.registry
        )
        self._latency_ms = Histogram(
            "squishy_request_latency_ms",
            "End-to-end latency of completed requests (ms)",
            mv,
            buckets=tuple(latency_buckets_ms),
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "squishy_batch_size",
            "Inputs per executed batch",
            mv,
            buckets=tuple(batch_size_buckets),
            registry=self.registry,
        )
        self._shed = Counter(
            "squishy_door_shed",
            "Requests shed before reaching a backend, by reason (deadline, queue: at the front door; capacity: "
            "beyond what a task's cheapest allowed variant can serve)",
            ("model", "version", "reason"),
            registry=self.registry,
        )
        self._slowdown = Gauge(
            "squishy_observed_slowdown",
            "Observed ÷ profiled batch latency, smoothed: early drop scales ℓ(b) by it, the planner by the "
            "share of it beyond the profile margin",
            mv,
            registry=self.registry,
        )
        self._fan_out = Gauge(
            "squishy_application_fan_out",
            "Calls to the child model per call to the parent, along an application's declared call tree",
            ("application", "parent", "child"),
            registry=self.registry,
        )
        self._stage_budget = Gauge(
            "squishy_stage_budget_ms",
            "The share of a composite model's SLO its stage gets (query analysis over the measured fan-out)",
            ("composite", "stage"),
            registry=self.registry,
        )
        self._stage_rate = Gauge(
            "squishy_stage_rate",
            "Calls per second the split in force was made for, per stage (the composite's rate × the fan-out)",
            ("composite", "stage"),
            registry=self.registry,
        )
        self._retries = Counter(
            "squishy_batch_retries",
            "Batches that failed and whose requests were then run one by one",
            mv,
            registry=self.registry,
        )
        self._hung = Counter(
            "squishy_hung_batches",
            "Batches that ran far past their profile and that the watchdog gave up on",
            mv,
            registry=self.registry,
        )
        self._slots_lost = Counter(
            "squishy_slots_lost", "Slots whose process died (a Ray actor or its node)", ["slot"], registry=self.registry
        )
        self._loop_lag_ms = Histogram(
            "squishy_event_loop_lag_ms",
            "How late the serving event loop ran a timer (ms): the wait a request arriving now has",
            buckets=LOOP_LAG_BUCKETS_MS,
            registry=self.registry,
        )
        self._variant_requests = Counter(
            "squishy_variant_requests",
            "Requests of a task (a model with variants) sent to each variant",
            ("model", "variant"),
            registry=self.registry,
        )
        self._variant_fallbacks = Counter(
            "squishy_variant_fallbacks",
            "Requests of a task that a burst moved from the variant chosen at admission to a cheaper one",
            ("model", "planned", "variant"),
            registry=self.registry,
        )
        self._variant_chosen = Gauge(
            "squishy_variant_chosen_accuracy",
            "Measured accuracy of the variant the plan chose for a task (0 for variants not chosen)",
            ("model", "variant"),
            registry=self.registry,
        )
        self._variant_share = Gauge(
            "squishy_variant_admitted_share",
            "Share of a task's requests the plan serves (the rest exceed its cheapest allowed variant)",
            ("model",),
            registry=self.registry,
        )
        self._planned_accuracy = Gauge(
            "squishy_planned_delivered_accuracy",
            "Accuracy the plan delivers over all tasks' requests, shed requests counted as wrong",
            registry=self.registry,
        )
        self._headroom = Gauge(
            "squishy_plan_headroom",
            "Multiple of the measured load the plan in force is made for (below 1: the slots cannot carry it all)",
            registry=self.registry,
        )
        self._required = Gauge(
            "squishy_plan_backends_required",
            "Backends the measured load needs at the target headroom (above squishy_plan_backends when capacity binds)",
            registry=self.registry,
        )
        self._shortfall = Gauge(
            "squishy_capacity_shortfall_rps",
            "Requests/s of a model's measured load beyond what the plan in force admits (shed at once)",
            ("model", "version"),
            registry=self.registry,
        )
        self._chosen_variant: dict[str, str] = {}
        self._plan = _PlanCollector()
        self.registry.register(self._plan)
        self._replans = Counter(
            "squishy_replans", "Plans installed, by what triggered them", ("reason",), registry=self.registry
        )
        self._moves = Counter(
            "squishy_session_moves", "Sessions placed on a backend they were not on before", registry=self.registry
        )
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._series_lock = threading.Lock()
        self._type_fixes = tuple(
            (f"# TYPE {name} untyped\n".encode(), f"# TYPE {name} counter\n".encode())
            for name in self._triton._families
        )

    # ------------------------------------------------------------------ recording (serving core)

    def record_request(
        self, model: str, version: str, outcome: Outcome, latency_ms: float = 0.0, reason: str = ""
    ) -> None:
        """One request finished. ``latency_ms``: arrival to reply, for ``met``/``late``.

        ``reason`` (failures only) is Triton's failure reason: defaults to REJECTED for ``dropped`` and
        BACKEND for ``failed``.
        """
        series = self._model(model, version)
        if outcome == "met" or outcome == "late":
            (series.slo_met if outcome == "met" else series.slo_late).inc()
            series.latency_ms.observe(latency_ms)
            self._triton.inc("nv_inference_request_success", series.labels, 1)
            self._triton.inc("nv_inference_request_duration_us", series.labels, latency_ms * 1000.0)
        elif outcome == "dropped":
            series.dropped.inc()
            self._triton.inc("nv_inference_request_failure", (*series.labels, reason or "REJECTED"), 1)
        elif outcome == "failed":
            self._triton.inc("nv_inference_request_failure", (*series.labels, reason or "BACKEND"), 1)
        else:
            raise ValueError(f"unknown request outcome {outcome!r}; expected met, late, dropped or failed")

    def record_batch(
        self,
        model: str,
        version: str,
        size: int,
        queue_ns_total: int,
        compute_ns: int,
        requests: int | None = None,
    ) -> None:
        """One batch executed: ``size`` inputs from ``requests`` requests (default: one request per input).

        ``queue_ns_total`` is the sum over the batch's requests of the time each waited; ``compute_ns``
        the batch's execution time, which (as in Triton) counts once for every request in the batch.
        """
        series = self._model(model, version)
        n_requests = size if requests is None else requests
        series.batch_size.observe(size)
        self._triton.inc("nv_inference_count", series.labels, size)
        self._triton.inc("nv_inference_exec_count", series.labels, 1)
        self._triton.inc("nv_inference_queue_duration_us", series.labels, queue_ns_total / 1000.0)
        self._triton.inc("nv_inference_compute_infer_duration_us", series.labels, compute_ns * n_requests / 1000.0)

    def set_pending(self, model: str, version: str, n: int) -> None:
        """Requests of this model admitted and not answered yet."""
        self._model(model, version).pending.set(n)

    def record_shed(self, model: str, version: str, reason: str) -> None:
        """A request shed at the door (never reached the core): a Triton REJECTED failure too."""
        self._shed.labels(model, version, reason).inc()
        self._triton.inc("nv_inference_request_failure", (model, version, "REJECTED"), 1)

    def set_slowdown(self, model: str, version: str, slowdown: float) -> None:
        self._slowdown.labels(model, version).set(slowdown)

    def set_fan_out(self, application: str, parent: str, child: str, gamma: float) -> None:
        self._fan_out.labels(application, parent, child).set(gamma)

    def set_stage_split(self, composite: str, stage: str, budget_ms: float, rate_per_s: float) -> None:
        self._stage_budget.labels(composite, stage).set(budget_ms)
        self._stage_rate.labels(composite, stage).set(rate_per_s)

    def record_retry(self, model: str, version: str) -> None:
        self._retries.labels(model, version).inc()

    def record_hang(self, model: str, version: str) -> None:
        self._hung.labels(model, version).inc()

    def record_slot_lost(self, slot: int) -> None:
        self._slots_lost.labels(str(slot)).inc()

    def record_variant(self, task: str, variant: str) -> None:
        self._variant_requests.labels(task, variant).inc()

    def record_variant_fallback(self, task: str, planned: str, variant: str) -> None:
        self._variant_fallbacks.labels(task, planned, variant).inc()

    def set_variant_choice(self, task: str, variant: str, accuracy: float, share: float) -> None:
        previous = self._chosen_variant.get(task)
        if previous is not None and previous != variant:
            self._variant_chosen.labels(task, previous).set(0.0)
        self._chosen_variant[task] = variant
        self._variant_chosen.labels(task, variant).set(accuracy)
        self._variant_share.labels(task).set(share)

    def set_capacity(self, headroom: float, shortfall: Mapping[tuple[str, str], float], required_backends: int) -> None:
        """The plan's headroom, the backends the load needs, and per (model, version) the measured load
        the plan does not admit."""
        self._headroom.set(headroom)
        self._required.set(required_backends)
        self._shortfall.clear()
        for (model, version), rate in shortfall.items():
            self._shortfall.labels(model, version).set(rate)

    def set_planned_accuracy(self, accuracy: float) -> None:
        self._planned_accuracy.set(accuracy)

    def observe_loop_lag(self, lag_ms: float) -> None:
        self._loop_lag_ms.observe(lag_ms)

    def set_plan(
        self,
        plan: Plan,
        versions: Mapping[str, str] | None = None,
        labels: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Publish the plan in force. ``versions`` maps model → version for the labels (default "");
        ``labels`` maps a plan's session name to its (model, version) labels when the two differ (the
        serving core names sessions ``model:version``)."""
        duty, occupancy, batch = [], [], []
        rates: dict[tuple[str, str, str], float] = {}
        prefix: dict[tuple[str, str, str], float] = {}
        for backend in plan.backends:
            backend_label = str(backend.backend_id)
            if backend.duty_cycle_ms is not None:
                duty.append((backend_label, float(backend.duty_cycle_ms)))
                occupancy.append((backend_label, backend.occupancy))
            for allocation in backend.allocations:
                # A prefix group reports each member model with the group's batch and its own rate.
                sessions = [(m.model, m.slo_ms, m.rate) for m in allocation.members] or [
                    (allocation.model, allocation.slo_ms, allocation.rate)
                ]
                trunk = self._labels(allocation.model, versions, labels)[0] if allocation.members else ""
                for model, slo_ms, rate in sessions:
                    session = (*self._labels(model, versions, labels), _slo_label(slo_ms))
                    batch.append(((*session, backend_label), allocation.batch))
                    rates[session] = rates.get(session, 0.0) + rate
                    if trunk:
                        prefix[(*session[:2], trunk)] = 1.0
        self._plan.plan = _PlanSnapshot(
            backends=plan.num_backends,
            duty_cycle_ms=tuple(duty),
            occupancy=tuple(occupancy),
            batch=tuple(batch),
            rate=tuple(rates.items()),
            prefix=tuple(prefix.items()),
        )

    def set_session_rates(
        self,
        rates: Mapping[SessionKey, float],
        versions: Mapping[str, str] | None = None,
        labels: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Publish the measured requests/s of every session (replaces the previous set)."""
        self._plan.session_rates = tuple(
            ((*self._labels(key.model, versions, labels), _slo_label(key.slo_ms)), float(rate))
            for key, rate in rates.items()
        )

    def record_replan(self, reason: str, sessions_moved: int) -> None:
        """A new plan was installed (``reason``: start, epoch, overload, underload, load, unload, ...)."""
        self._replans.labels(reason).inc()
        self._moves.inc(sessions_moved)

    @staticmethod
    def _labels(
        model: str, versions: Mapping[str, str] | None, labels: Mapping[str, tuple[str, str]] | None
    ) -> tuple[str, str]:
        if labels is not None and model in labels:
            return labels[model]
        return model, (versions or {}).get(model, "")

    # -------------------------------------------------------------------------------- reading

    def exposition(self) -> bytes:
        """Everything in Prometheus' text format (what ``GET /metrics`` returns)."""
        text = generate_latest(self.registry)
        for untyped, counter in self._type_fixes:
            text = text.replace(untyped, counter, 1)
        return text

    def triton_value(self, name: str, model: str, version: str, reason: str | None = None) -> float:
        """Current value of one of Triton's counters (for tests and the CLI's summaries)."""
        labels = (model, version) if reason is None else (model, version, reason)
        return self._triton.value(name, labels)

    # ------------------------------------------------------------------------------- internals

    def _model(self, model: str, version: str) -> _ModelSeries:
        key = (model, version)
        series = self._series.get(key)  # lock-free fast path: dict reads are atomic
        if series is None:
            with self._series_lock:
                series = self._series.get(key)
                if series is None:
                    series = _ModelSeries(
                        labels=key,
                        slo_met=self._slo_met.labels(model, version),
                        slo_late=self._slo_late.labels(model, version),
                        dropped=self._dropped.labels(model, version),
                        latency_ms=self._latency_ms.labels(model, version),
                        batch_size=self._batch_size.labels(model, version),
                        pending=self._pending.labels(model, version),
                    )
                    for name in (
                        "nv_inference_request_success",
                        "nv_inference_count",
                        "nv_inference_exec_count",
                        "nv_inference_request_duration_us",
                        "nv_inference_queue_duration_us",
                        "nv_inference_compute_infer_duration_us",
                    ):
                        self._triton.ensure(name, key)
                    self._series[key] = series
        return series

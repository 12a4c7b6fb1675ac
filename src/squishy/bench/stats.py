"""A run's figures, per model and overall, from its request log.

Only requests *scheduled* in the measured window count (warm-up ones are sent but not counted), and
every count is over them, whenever their reply came:

- latency percentiles: over successful (200) replies, measured from the scheduled time;
- throughput: successful replies per second of window; goodput: replies within the SLO per second;
- bad rate = (late + dropped + errors) / sent, the definition used everywhere in squishy; a request
  with no reply by the end of the run, or a broken connection, is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from squishy.bench.records import CONNECTION_ERROR, NO_REPLY, STATUS_DROPPED, STATUS_OK, RequestLog

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Stats:
    slo_ms: float | None  # None for "overall" when the models' SLOs differ
    offered_rate_per_s: float  # sent / window
    sent: int
    ok: int  # 200 replies
    met: int  # 200 replies within the SLO
    late: int  # 200 replies past the SLO
    dropped: int  # 503: the server shed the request
    errors: int  # every other outcome, including no_reply and connection_errors
    no_reply: int
    connection_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_per_s: float
    goodput_per_s: float
    bad_rate: float
    send_lag_p50_ms: float  # how late requests went out: the generator's own lag and local queueing
    send_lag_p99_ms: float
    status_counts: dict[int, int]  # every status seen, for the error breakdown

    @property
    def met_fraction(self) -> float:
        return self.met / self.sent if self.sent else math.nan

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["status_counts"] = {str(k): v for k, v in self.status_counts.items()}
        data["met_fraction"] = self.met_fraction
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}


def summarize(
    log: RequestLog,
    slo_ms_by_model: Sequence[float],
    window_start_s: float,
    window_s: float,
) -> tuple[list[Stats], Stats]:
    """(stats of each model, in the run's order; stats of all of them together)."""
    counted = (log.scheduled_s >= window_start_s) & (log.scheduled_s < window_start_s + window_s)
    met = log.met_slo(slo_ms_by_model)
    per_model = [
        _stats(log, counted & (log.model_index == i), met, slo_ms, window_s) for i, slo_ms in enumerate(slo_ms_by_model)
    ]
    overall_slo = slo_ms_by_model[0] if len(set(slo_ms_by_model)) == 1 else None
    return per_model, _stats(log, counted, met, overall_slo, window_s)


def _stats(log: RequestLog, mask: np.ndarray, met_all: np.ndarray, slo_ms: float | None, window_s: float) -> Stats:
    status = log.status[mask]
    ok_mask = status == STATUS_OK
    sent = int(mask.sum())
    ok = int(ok_mask.sum())
    met = int(met_all[mask].sum())
    dropped = int((status == STATUS_DROPPED).sum())
    errors = sent - ok - dropped
    latency_ms = log.latency_ms[mask][ok_mask]
    lag_ms = log.send_lag_ms[mask]
    lag_ms = lag_ms[~np.isnan(lag_ms)]
    p50, p90, p99 = _percentiles(latency_ms)
    lag_p50, lag_p99 = _percentiles(lag_ms, (50, 99))
    values, counts = np.unique(status, return_counts=True)
    return Stats(
        slo_ms=slo_ms,
        offered_rate_per_s=sent / window_s,
        sent=sent,
        ok=ok,
        met=met,
        late=ok - met,
        dropped=dropped,
        errors=errors,
        no_reply=int((status == NO_REPLY).sum()),
        connection_errors=int((status == CONNECTION_ERROR).sum()),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        throughput_per_s=ok / window_s,
        goodput_per_s=met / window_s,
        bad_rate=(sent - met) / sent if sent else math.nan,
        send_lag_p50_ms=lag_p50,
        send_lag_p99_ms=lag_p99,
        status_counts={int(v): int(c) for v, c in zip(values, counts, strict=True)},
    )


def _percentiles(values: np.ndarray, which: Sequence[int] = PERCENTILES) -> list[float]:
    if len(values) == 0:
        return [math.nan] * len(which)
    return [float(v) for v in np.percentile(values, which)]

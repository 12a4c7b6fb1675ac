"""Figures from a request log: what counts (the window), met/late/dropped/errors, bad rate, goodput."""

from __future__ import annotations

import math

import numpy as np
import pytest

from squishy.bench import CONNECTION_ERROR, NO_REPLY, RequestLog
from squishy.bench.stats import summarize

NAN = math.nan


def log_of(rows: list[tuple[int, float, float, float, int]]) -> RequestLog:
    """rows: (model, scheduled_s, send_s, reply_s, status)."""
    columns = list(zip(*rows, strict=True))
    return RequestLog(
        model_index=np.array(columns[0], dtype=np.int32),
        scheduled_s=np.array(columns[1]),
        send_s=np.array(columns[2]),
        reply_s=np.array(columns[3]),
        status=np.array(columns[4], dtype=np.int32),
    )


def test_each_outcome_is_classified_and_the_bad_rate_counts_all_but_met() -> None:
    log = log_of(
        [
            (0, 0.5, 0.5, 0.6, 200),  # warm-up: not counted
            (0, 1.0, 1.0, 1.010, 200),  # met (10 ms ≤ 20 ms)
            (0, 1.1, 1.1, 1.105, 200),  # met
            (0, 1.2, 1.25, 1.230, 200),  # late: 30 ms from its *schedule*, though only 10 ms after it went out
            (0, 1.3, 1.3, 1.301, 503),  # dropped
            (0, 1.4, 1.4, 1.401, 400),  # error
            (0, 1.5, 1.5, NAN, NO_REPLY),  # error
            (1, 1.6, 1.6, 1.601, CONNECTION_ERROR),  # error, other model
            (1, 1.7, 1.7, 1.740, 200),  # met under model 1's 50 ms SLO
            (0, 3.0, 3.0, 3.001, 200),  # after the window: not counted
        ]
    )
    per_model, overall = summarize(log, [20.0, 50.0], window_start_s=1.0, window_s=2.0)
    first, second = per_model
    assert (first.sent, first.ok, first.met, first.late, first.dropped, first.errors) == (6, 3, 2, 1, 1, 2)
    assert first.no_reply == 1 and first.bad_rate == pytest.approx(4 / 6)
    assert first.goodput_per_s == pytest.approx(1.0) and first.throughput_per_s == pytest.approx(1.5)
    assert first.p50_ms == pytest.approx(10.0)
    assert first.send_lag_p99_ms == pytest.approx(50.0, rel=0.1)
    assert (second.sent, second.met, second.errors, second.connection_errors) == (2, 1, 1, 1)
    assert (overall.sent, overall.met) == (8, 3)
    assert overall.bad_rate == pytest.approx(5 / 8)
    assert overall.slo_ms is None  # the models' SLOs differ
    assert overall.status_counts == {CONNECTION_ERROR: 1, NO_REPLY: 1, 200: 4, 400: 1, 503: 1}


def test_no_replies_give_no_percentiles_rather_than_zeros() -> None:
    log = log_of([(0, 1.0, 1.0, NAN, NO_REPLY)])
    (stats,), _ = summarize(log, [10.0], 0.0, 2.0)
    assert math.isnan(stats.p99_ms) and stats.bad_rate == 1.0 and stats.to_dict()["p99_ms"] is None

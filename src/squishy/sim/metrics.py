"""What a simulation measured: good / late / dropped per source, latency percentiles, time series.

Outcomes count against the request's send time: a request (or a complex query) is *good* when its reply
leaves by its deadline, *late* when the reply comes after it, *dropped* when the backend answered with
an error instead. Bad rate = (late + dropped) / sent (the simulator has no other errors). Summary counts
cover requests sent after the warm-up; the per-second series cover the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Latency histogram: log-spaced bins from 10 µs to 1000 s, 0.46% wide, for percentiles of any run size.
HIST_LOW_MS = 0.01
HIST_HIGH_MS = 1e6
HIST_BINS = 4000
# Latencies are buffered and folded into the histogram in chunks this large.
FLUSH_SAMPLES = 1 << 20
PERCENTILES = (50.0, 90.0, 99.0)


class Metrics:
    def __init__(self, names: Sequence[str], warmup_ms: float, end_ms: float, bin_ms: float = 1000.0) -> None:
        self.names = list(names)
        count = len(self.names)
        self.warmup_ms = warmup_ms
        self.end_ms = end_ms
        self.bin_ms = bin_ms
        self.sent = np.zeros(count, dtype=np.int64)
        self.good = np.zeros(count, dtype=np.int64)
        self.late = np.zeros(count, dtype=np.int64)
        self.dropped = np.zeros(count, dtype=np.int64)
        bins = math.ceil(end_ms / bin_ms) + 1
        self.sent_series = np.zeros(bins, dtype=np.int64)
        self.bad_series = np.zeros(bins, dtype=np.int64)
        # The same per source (rows), by send time.
        self.source_sent_series = np.zeros((count, bins), dtype=np.int64)
        self.source_bad_series = np.zeros((count, bins), dtype=np.int64)
        self._edges = np.geomspace(HIST_LOW_MS, HIST_HIGH_MS, HIST_BINS + 1)
        self._hist = np.zeros((count, HIST_BINS + 2), dtype=np.int64)
        self._buffer: list[list[np.ndarray]] = [[] for _ in range(count)]
        self._buffered = 0
        self.served_total = 0  # every request resolved, warm-up included (for speed reports)

    # ----------------------------------------------------------------------------------- recording
    def add_sent(self, source: int, sends_ms: np.ndarray) -> None:
        if sends_ms[0] >= self.warmup_ms:
            self.sent[source] += len(sends_ms)
        else:
            self.sent[source] += int(np.count_nonzero(sends_ms >= self.warmup_ms))
        self._bin(self.sent_series, sends_ms)
        self._bin(self.source_sent_series[source], sends_ms)

    def add_served(self, source: int, sends_ms: np.ndarray, latencies_ms: np.ndarray, late: np.ndarray) -> None:
        """``late`` is a boolean mask over the requests."""
        count = len(sends_ms)
        self.served_total += count
        late_count = int(np.count_nonzero(late))
        if late_count:
            self._bin(self.bad_series, sends_ms[late])
            self._bin(self.source_bad_series[source], sends_ms[late])
        if sends_ms.min() < self.warmup_ms:
            keep = sends_ms >= self.warmup_ms
            late = late & keep
            latencies_ms = latencies_ms[keep]
            count = int(np.count_nonzero(keep))
            late_count = int(np.count_nonzero(late))
        self.late[source] += late_count
        self.good[source] += count - late_count
        if count:
            self._buffer[source].append(latencies_ms)
            self._buffered += count
            if self._buffered >= FLUSH_SAMPLES:
                self.flush()

    def add_served_sorted(self, source: int, sends_ms: np.ndarray, latencies_ms: np.ndarray, late_count: int) -> None:
        """``add_served`` for requests in deadline order of one SLO: the late ones are the first ``late_count``."""
        count = len(sends_ms)
        if sends_ms[0] < self.warmup_ms:
            late = np.zeros(count, dtype=bool)
            late[:late_count] = True
            self.add_served(source, sends_ms, latencies_ms, late)
            return
        self.served_total += count
        if late_count:
            self._bin(self.bad_series, sends_ms[:late_count])
            self._bin(self.source_bad_series[source], sends_ms[:late_count])
            self.late[source] += late_count
        self.good[source] += count - late_count
        self._buffer[source].append(latencies_ms)
        self._buffered += count
        if self._buffered >= FLUSH_SAMPLES:
            self.flush()

    def add_dropped(self, source: int, sends_ms: np.ndarray) -> None:
        self.served_total += len(sends_ms)
        self._bin(self.bad_series, sends_ms)
        self._bin(self.source_bad_series[source], sends_ms)
        # One request at a time is the common case (a hopeless request swept on arrival): no reduction.
        earliest = float(sends_ms[0]) if len(sends_ms) == 1 else sends_ms.min()
        if earliest < self.warmup_ms:
            self.dropped[source] += int(np.count_nonzero(sends_ms >= self.warmup_ms))
        else:
            self.dropped[source] += len(sends_ms)

    def _bin(self, series: np.ndarray, sends_ms: np.ndarray) -> None:
        if len(sends_ms) == 1:
            series[int(sends_ms[0] // self.bin_ms)] += 1
            return
        index = (sends_ms // self.bin_ms).astype(np.int64)
        if index[0] == index[-1] and (len(index) < 3 or bool((index == index[0]).all())):
            series[index[0]] += len(index)
        else:
            np.add.at(series, index, 1)

    def flush(self) -> None:
        for source, pieces in enumerate(self._buffer):
            if pieces:
                values = np.concatenate(pieces)
                slots = np.searchsorted(self._edges, values, side="right")
                self._hist[source] += np.bincount(slots, minlength=HIST_BINS + 2)
                pieces.clear()
        self._buffered = 0

    # ------------------------------------------------------------------------------------- reading
    def percentiles(self, sources: Sequence[int] | None = None) -> dict[str, float | None]:
        self.flush()
        hist = self._hist if sources is None else self._hist[list(sources)]
        counts = hist.sum(axis=0)
        total = int(counts.sum())
        out: dict[str, float | None] = {}
        cumulative = np.cumsum(counts)
        for p in PERCENTILES:
            if total == 0:
                out[f"p{p:g}_ms"] = None
                continue
            slot = int(np.searchsorted(cumulative, math.ceil(p / 100.0 * total), side="left"))
            # The bin's upper edge: a percentile is never under-reported.
            edge = self._edges[min(slot, HIST_BINS)]
            out[f"p{p:g}_ms"] = round(float(edge), 3)
        return out

    def totals(self, sources: Sequence[int] | None = None) -> dict[str, Any]:
        index = slice(None) if sources is None else list(sources)
        sent = int(self.sent[index].sum())
        good = int(self.good[index].sum())
        late = int(self.late[index].sum())
        dropped = int(self.dropped[index].sum())
        # Every request sent is resolved before a run ends (nothing is lost), so sent is the denominator.
        return {
            "sent": sent,
            "good": good,
            "late": late,
            "dropped": dropped,
            "bad_rate": round((late + dropped) / sent, 6) if sent else 0.0,
            "good_rate": round(good / sent, 6) if sent else 1.0,
            **self.percentiles(sources),
        }

    def per_source(self) -> dict[str, dict[str, Any]]:
        return {name: self.totals([i]) for i, name in enumerate(self.names)}

    def bad_rate_series(self, window_bins: int = 1) -> list[float | None]:
        """Bad rate per window of ``window_bins`` bins (by send time); None where nothing was sent."""
        sent = np.convolve(self.sent_series, np.ones(window_bins, dtype=np.int64))[: len(self.sent_series)]
        bad = np.convolve(self.bad_series, np.ones(window_bins, dtype=np.int64))[: len(self.bad_series)]
        return [round(b / s, 6) if s else None for b, s in zip(bad.tolist(), sent.tolist(), strict=True)]

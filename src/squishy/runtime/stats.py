"""Triton-style per-model statistics, accumulated by the backends' worker threads."""

from __future__ import annotations

import threading
from dataclasses import replace

from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.runtime.api import ModelStatistics


class StatisticsBook:
    """Cumulative counters per (model, version); every method is thread-safe and cheap."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], ModelStatistics] = {}

    def ensure(self, name: str, version: str) -> None:
        with self._lock:
            self._get(name, version)

    def record_batch(
        self,
        name: str,
        version: str,
        *,
        inputs: int,
        requests: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        """One executed batch: ``queue_ns`` summed over its requests, the other durations once per batch."""
        with self._lock:
            stats = self._get(name, version)
            stats.inference_count += inputs
            stats.execution_count += 1
            stats.queue_count += requests
            stats.queue_ns += queue_ns
            # Triton counts compute time once per request of the batch.
            stats.compute_infer_count += requests
            stats.compute_input_ns += input_ns * requests
            stats.compute_infer_ns += infer_ns * requests
            stats.compute_output_ns += output_ns * requests
            count, ns = stats.batch_stats.get(inputs, (0, 0))
            stats.batch_stats[inputs] = (count + 1, ns + input_ns + infer_ns + output_ns)
            stats.last_inference_ms = int(self._clock.epoch_ms())

    def record_success(self, name: str, version: str, duration_ns: int) -> None:
        with self._lock:
            stats = self._get(name, version)
            stats.success_count += 1
            stats.success_ns += duration_ns

    def record_failure(self, name: str, version: str, duration_ns: int) -> None:
        with self._lock:
            stats = self._get(name, version)
            stats.fail_count += 1
            stats.fail_ns += duration_ns

    def snapshot(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        with self._lock:
            return [
                replace(stats, batch_stats=dict(stats.batch_stats))
                for (n, v), stats in sorted(self._stats.items())
                if (name is None or n == name) and (not version or v == version)
            ]

    def _get(self, name: str, version: str) -> ModelStatistics:
        key = (name, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ModelStatistics(name=name, version=version)
        return stats

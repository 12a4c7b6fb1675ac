"""The control loop: rate estimates from the frontends' counts, and when to re-plan.

Each tick (1 s) the frontends' per-source request counts update an exponentially weighted moving
average with a ~10 s time constant. The scheduler re-plans every epoch (30 s), or early when a source's
estimate leaves [0.8, 1.1] of the rate its plan was made for, but at most once per 10 s. Re-planning is
incremental (``squishy.scheduler.replan``); while a moved session's model loads on its new backend the
old plan keeps serving, and the new plan takes over when the load completes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ControlConfig:
    epoch_s: float = 30.0
    ewma_s: float = 10.0  # time constant of the rate estimate
    min_interval_s: float = 10.0  # early re-plans at most this often
    band: tuple[float, float] = (0.8, 1.1)  # re-plan early when estimate / planned leaves this band
    headroom: float = 1.0  # plan for this multiple of the estimated rates

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> ControlConfig:
        data = dict(data or {})
        band = data.pop("band", (0.8, 1.1))
        out = cls(band=(float(band[0]), float(band[1])), **{k: float(v) for k, v in data.items()})  # type: ignore[index, arg-type]
        return out


class RateEstimator:
    """EWMA of per-source rates (requests/s) from per-tick counts."""

    def __init__(self, initial_rates: Sequence[float], time_constant_s: float) -> None:
        self.rates = np.asarray(initial_rates, dtype=float).copy()
        self.time_constant_s = time_constant_s

    def update(self, counts: np.ndarray, tick_s: float) -> None:
        weight = 1.0 - math.exp(-tick_s / self.time_constant_s)
        self.rates += weight * (counts / tick_s - self.rates)


class ReplanPolicy:
    """Decides, each tick, whether the scheduler should re-plan now."""

    def __init__(self, config: ControlConfig, planned_rates: Sequence[float]) -> None:
        self.config = config
        self.planned = np.asarray(planned_rates, dtype=float).copy()
        self.last_replan_s = 0.0

    def due(self, now_s: float, estimates: np.ndarray) -> str | None:
        """'epoch', 'early', or None."""
        since = now_s - self.last_replan_s
        if since >= self.config.epoch_s - 1e-9:
            return "epoch"
        if since < self.config.min_interval_s - 1e-9:
            return None
        low, high = self.config.band
        planned = self.planned
        active = planned > 0
        outside = np.any(active & ((estimates < low * planned) | (estimates > high * planned)))
        started = np.any(~active & (estimates > 0.5))  # a source that had no traffic now has some
        return "early" if outside or started else None

    def replanned(self, now_s: float, planned_rates: np.ndarray) -> None:
        self.last_replan_s = now_s
        self.planned = planned_rates.copy()

"""When to re-plan: every epoch, or early when a session's load leaves its allocation's band.

Nexus re-plans every epoch (30 s on a cluster) and early when a session's measured rate leaves
[0.8, 1.1] of the rate its plan provisions, but never more often than every 10 s, because each re-plan
may move sessions and a move costs a model load.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_EPOCH_S = 30.0
DEFAULT_MIN_INTERVAL_S = 10.0
# A session whose rate leaves [LOW, HIGH] × its provisioned rate triggers an early re-plan.
DEFAULT_LOW_FACTOR = 0.8
DEFAULT_HIGH_FACTOR = 1.1


class ReplanReason(StrEnum):
    EPOCH = "epoch"
    OVERLOAD = "overload"  # some session runs above its allocation
    UNDERLOAD = "underload"  # some session runs well below its allocation
    NEW_SESSION = "new_session"  # traffic for a session the plan does not provision


@dataclass
class EpochPolicy:
    epoch_s: float = DEFAULT_EPOCH_S
    min_interval_s: float = DEFAULT_MIN_INTERVAL_S
    low_factor: float = DEFAULT_LOW_FACTOR
    high_factor: float = DEFAULT_HIGH_FACTOR
    last_replan_s: float = 0.0

    def due(
        self, now_s: float, measured: Mapping[Hashable, float], provisioned: Mapping[Hashable, float]
    ) -> ReplanReason | None:
        """Why a re-plan is due now, or None. Call ``replanned(now_s)`` after acting on it.

        ``provisioned`` are the measured rates the plan was made for. A plan made with headroom (for a
        multiple of them, on spare backends) still counts as overloaded once the load rises past the band
        around what was measured: the headroom is for bursts, and a plan made from a low early estimate
        (a server that just started, a ramp) must not keep its low batch sizes and shares for good.
        """
        since = now_s - self.last_replan_s
        if since < min(self.epoch_s, self.min_interval_s):
            return None
        # A rate out of its band names the re-plan even when the epoch is also due: an epoch re-plan is
        # one made at steady load, and the loop installs those only when they save a backend.
        out_of_band = self.out_of_band(measured, provisioned)
        if out_of_band is not None and since >= self.min_interval_s:
            return out_of_band
        if since >= self.epoch_s:
            return out_of_band or ReplanReason.EPOCH
        return None

    def out_of_band(
        self, measured: Mapping[Hashable, float], provisioned: Mapping[Hashable, float]
    ) -> ReplanReason | None:
        """The first session whose measured rate lies outside its band, as a reason; None if all are in."""
        for key, rate in measured.items():
            planned = provisioned.get(key, 0.0)
            if planned <= 0:
                if rate > 0:
                    return ReplanReason.NEW_SESSION
            elif rate > self.high_factor * planned:
                return ReplanReason.OVERLOAD
            elif rate < self.low_factor * planned:
                return ReplanReason.UNDERLOAD
        return None

    def replanned(self, now_s: float) -> None:
        self.last_replan_s = now_s

"""Batching-aware model profiles: ℓ(b), the latency of one batch of b inputs on one device kind.

A profile is identified by (model, device, precision). Latencies are milliseconds per batch, memory
is megabytes for the model at that batch size (weights plus activations). A profile measured only at
some batch sizes allows only those sizes unless it asks for interpolation.

Published curves are not always monotone. ``Profile.from_dict`` cleans them the way the scheduler
needs (ℓ(b)/b non-increasing, ℓ non-decreasing) and records every change in ``changes``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from squishy.errors import ProfileError

# The largest batch a linear profile allows when the file does not say.
DEFAULT_LINEAR_MAX_BATCH = 64
# A larger batch whose latency per input is at most this much worse than a smaller one's is kept as
# measurement noise (see ``clean_curve``).
PER_INPUT_NOISE_TOLERANCE = 0.01


def _as_batch_map(raw: Any, what: str, model: str) -> dict[int, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ProfileError(f"profile {model!r}: {what} must map batch size to a number, got {type(raw).__name__}")
    out: dict[int, float] = {}
    for key, value in raw.items():
        try:
            batch = int(key)
        except (TypeError, ValueError):
            raise ProfileError(f"profile {model!r}: {what} has a batch size {key!r} that is not an integer") from None
        if batch < 1 or str(batch) != str(key).strip():
            raise ProfileError(f"profile {model!r}: {what} has an invalid batch size {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ProfileError(f"profile {model!r}: {what}[{key}] = {value!r} is not a finite number")
        if value < 0:
            raise ProfileError(f"profile {model!r}: {what}[{key}] = {value} is negative")
        out[batch] = float(value)
    return dict(sorted(out.items()))


def clean_curve(
    batch_ms: Mapping[int, float], tolerance: float = PER_INPUT_NOISE_TOLERANCE
) -> tuple[dict[int, float], list[str]]:
    """Make a measured or published curve usable by the scheduler; return it and what changed.

    1. Drop batch sizes whose latency per input is worse than a smaller batch's by more than
       ``tolerance``: such a size has lower throughput *and* higher latency, so no plan should use it.
    2. A size within ``tolerance`` is measurement noise on a nearly linear curve (CPU curves are): keep
       it, and raise the smaller sizes' latencies to its latency per input instead (a safe over-estimate
       of at most ``tolerance``), so larger batches stay available.
    3. Make ℓ non-decreasing with a running max: a larger batch cannot be promised to finish sooner than a
       smaller one, because a short batch may take the larger batch's path (padding, kernel choice).
    After these steps ℓ(b)/b is non-increasing over the kept sizes, which is what the packing assumes.
    """
    changes: list[str] = []
    kept: dict[int, float] = {}
    best_measured = math.inf  # the lowest per-input latency measured so far, the yardstick for dropping
    best_kept = math.inf  # the lowest per-input latency of the kept curve (after raises)
    for batch, latency in sorted(batch_ms.items()):
        per_input = latency / batch
        if per_input > best_measured * (1 + tolerance) + 1e-12:
            changes.append(
                f"dropped batch {batch}: {latency:g} ms is {per_input:.4g} ms/input, "
                f"worse than {best_measured:.4g} ms/input at a smaller batch"
            )
            continue
        if per_input > best_kept:
            for smaller, value in kept.items():
                if value / smaller < per_input:
                    raised = smaller * per_input
                    changes.append(
                        f"raised batch {smaller} from {value:g} ms to {raised:.6g} ms to keep batch {batch}, "
                        f"within {tolerance:.0%} per input"
                    )
                    kept[smaller] = raised
        best_measured = min(best_measured, per_input)
        best_kept = min(best_kept, per_input) if per_input <= best_kept else per_input
        kept[batch] = latency
    running_max = 0.0
    for batch, latency in kept.items():
        if latency < running_max:
            changes.append(f"raised batch {batch} from {latency:g} ms to {running_max:g} ms (running max)")
            kept[batch] = running_max
        running_max = max(running_max, kept[batch])
    return kept, changes


@dataclass(frozen=True)
class Profile:
    """ℓ(b) for one (model, device, precision), cleaned and ready for scheduling.

    ``allowed_batches`` lists the batch sizes a plan may use: the measured sizes, or every size from 1 to
    the largest measured one when ``interpolate`` is set (linear in between; below the smallest measured
    size the smallest size's latency is used, a safe over-estimate).
    """

    model: str
    device: str
    batch_ms: Mapping[int, float]
    precision: str = "fp32"
    std_ms: Mapping[int, float] = field(default_factory=dict)
    memory_mb: Mapping[int, float] = field(default_factory=dict)
    preprocess_ms: float = 0.0
    postprocess_ms: float = 0.0
    # Pre/post-processing is per frame, shared by this many requests (a game frame feeds 3 recognizers).
    requests_per_frame: float = 1.0
    source: str = ""
    interpolate: bool = False
    # Human-readable record of what cleaning changed relative to the file.
    changes: tuple[str, ...] = ()
    # Fields squishy does not interpret (statistic, note, ...) are kept for round-tripping.
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Derived lookup tables (allowed sizes and their latencies, dense when interpolating).
    _allowed: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _latencies: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.batch_ms:
            raise ProfileError(f"profile {self.model!r} on {self.device!r} has no batch sizes")
        measured = sorted(self.batch_ms)
        if self.interpolate:
            allowed = list(range(1, measured[-1] + 1))
            latencies = [self._interpolated(self.batch_ms, b) for b in allowed]
        else:
            allowed = measured
            latencies = [self.batch_ms[b] for b in allowed]
        object.__setattr__(self, "_allowed", tuple(allowed))
        object.__setattr__(self, "_latencies", tuple(latencies))

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source_hint: str = "") -> Profile:
        """Build a profile from the file format (batch table or linear form), cleaning the curve."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"a profile must be a mapping, got {type(data).__name__}")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise ProfileError(f"profile {source_hint or '?'}: 'model' must be a non-empty string")
        device = data.get("device", "cpu")
        if not isinstance(device, str) or not device:
            raise ProfileError(f"profile {model!r}: 'device' must be a non-empty string")
        precision = str(data.get("precision", "fp32"))
        if "batch_ms" in data:
            raw = _as_batch_map(data["batch_ms"], "batch_ms", model)
            interpolate = bool(data.get("interpolate", False))
        elif "alpha_ms" in data:
            raw = cls._linear_table(model, data)
            interpolate = False  # every integer size is already in the table
        else:
            raise ProfileError(f"profile {model!r}: needs 'batch_ms' or a linear form ('alpha_ms', 'beta_ms')")
        if not raw:
            raise ProfileError(f"profile {model!r}: 'batch_ms' is empty")
        if any(v <= 0 for v in raw.values()):
            raise ProfileError(f"profile {model!r}: batch latencies must be positive")
        cleaned, changes = clean_curve(raw)
        std = _as_batch_map(data.get("std_ms"), "std_ms", model)
        memory = _as_batch_map(data.get("memory_mb"), "memory_mb", model)
        pre = cls._non_negative(data, "preprocess_ms", model)
        post = cls._non_negative(data, "postprocess_ms", model)
        per_frame = data.get("requests_per_frame", 1.0)
        if isinstance(per_frame, bool) or not isinstance(per_frame, int | float) or not per_frame >= 1:
            raise ProfileError(f"profile {model!r}: requests_per_frame must be a number >= 1, got {per_frame!r}")
        known = {
            "model",
            "device",
            "precision",
            "batch_ms",
            "std_ms",
            "memory_mb",
            "preprocess_ms",
            "postprocess_ms",
            "requests_per_frame",
            "source",
            "interpolate",
            "alpha_ms",
            "beta_ms",
            "max_batch",
            "changes",
        }
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(
            model=model,
            device=device,
            precision=precision,
            batch_ms=cleaned,
            std_ms={b: s for b, s in std.items() if b in cleaned or interpolate},
            memory_mb=memory,
            preprocess_ms=pre,
            postprocess_ms=post,
            requests_per_frame=float(per_frame),
            source=str(data.get("source", source_hint)),
            interpolate=interpolate,
            changes=tuple(changes),
            extra=extra,
        )

    @classmethod
    def linear(
        cls,
        model: str,
        alpha_ms: float,
        beta_ms: float,
        *,
        device: str = "cpu",
        max_batch: int = DEFAULT_LINEAR_MAX_BATCH,
        **kwargs: Any,
    ) -> Profile:
        """ℓ(b) = alpha·b + beta for every b in 1..max_batch."""
        data = {"model": model, "device": device, "alpha_ms": alpha_ms, "beta_ms": beta_ms, "max_batch": max_batch}
        return cls.from_dict({**data, **kwargs})

    @staticmethod
    def _linear_table(model: str, data: Mapping[str, Any]) -> dict[int, float]:
        try:
            alpha = float(data["alpha_ms"])
            beta = float(data.get("beta_ms", 0.0))
            max_batch = int(data.get("max_batch", DEFAULT_LINEAR_MAX_BATCH))
        except (TypeError, ValueError):
            raise ProfileError(f"profile {model!r}: alpha_ms, beta_ms and max_batch must be numbers") from None
        if alpha < 0 or beta < 0 or alpha + beta <= 0 or max_batch < 1:
            raise ProfileError(f"profile {model!r}: linear profile needs alpha_ms, beta_ms >= 0 and max_batch >= 1")
        return {b: alpha * b + beta for b in range(1, max_batch + 1)}

    @staticmethod
    def _non_negative(data: Mapping[str, Any], key: str, model: str) -> float:
        value = data.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ProfileError(f"profile {model!r}: {key} must be a non-negative number, got {value!r}")
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "batch_ms": {str(b): round(v, 6) for b, v in sorted(self.batch_ms.items())},
        }
        if self.std_ms:
            out["std_ms"] = {str(b): round(v, 6) for b, v in sorted(self.std_ms.items())}
        if self.memory_mb:
            out["memory_mb"] = {str(b): round(v, 3) for b, v in sorted(self.memory_mb.items())}
        if self.preprocess_ms:
            out["preprocess_ms"] = self.preprocess_ms
        if self.postprocess_ms:
            out["postprocess_ms"] = self.postprocess_ms
        if self.requests_per_frame != 1.0:
            out["requests_per_frame"] = self.requests_per_frame
        if self.interpolate:
            out["interpolate"] = True
        if self.source:
            out["source"] = self.source
        if self.changes:
            out["changes"] = list(self.changes)
        out.update(self.extra)
        return out

    # ------------------------------------------------------------------------------------- queries
    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.device, self.precision)

    @property
    def allowed_batches(self) -> tuple[int, ...]:
        return self._allowed

    @property
    def max_batch(self) -> int:
        return self.allowed_batches[-1]

    @property
    def min_batch(self) -> int:
        return self.allowed_batches[0]

    def latency_ms(self, batch: int) -> float:
        """ℓ(batch) for an allowed batch size."""
        allowed: tuple[int, ...] = self._allowed
        i = bisect.bisect_left(allowed, batch)
        if i == len(allowed) or allowed[i] != batch:
            raise ProfileError(
                f"profile {self.model!r}: batch size {batch} is not allowed (allowed: {self._describe()})"
            )
        return self._latencies[i]

    def smallest_allowed_at_least(self, count: int) -> int | None:
        """The smallest allowed batch that holds ``count`` inputs, or None if none is large enough."""
        allowed: tuple[int, ...] = self._allowed
        i = bisect.bisect_left(allowed, max(count, 1))
        return allowed[i] if i < len(allowed) else None

    def batch_latency_ms(self, count: int) -> float:
        """Time to run ``count`` inputs: ℓ of the smallest allowed batch that holds them (padding)."""
        batch = self.smallest_allowed_at_least(count)
        if batch is None:
            raise ProfileError(f"profile {self.model!r}: {count} inputs exceed the largest batch {self.max_batch}")
        return self.latency_ms(batch)

    def throughput(self, batch: int) -> float:
        """Requests per second of one backend running batches of ``batch`` back to back."""
        return 1000.0 * batch / self.latency_ms(batch)

    def max_batch_within(self, budget_ms: float, *, tolerance_ms: float = 0.0) -> int | None:
        """The largest allowed batch whose latency fits ``budget_ms``, or None."""
        latencies: tuple[float, ...] = self._latencies
        i = bisect.bisect_right(latencies, budget_ms + tolerance_ms)
        return self._allowed[i - 1] if i > 0 else None

    def memory(self, batch: int) -> float:
        """Megabytes the model needs at ``batch`` (0 when the profile records no memory)."""
        if not self.memory_mb:
            return 0.0
        return self._interpolated(self.memory_mb, batch, extrapolate=True)

    def std(self, batch: int) -> float:
        if not self.std_ms:
            return 0.0
        return self._interpolated(self.std_ms, batch, extrapolate=True)

    @property
    def processing_share_ms(self) -> float:
        """Pre/post-processing CPU one request carries: its frame's, shared by the frame's requests."""
        return (self.preprocess_ms + self.postprocess_ms) / self.requests_per_frame

    # ---------------------------------------------------------------------------------- derivations
    def with_margin(self, inflation: float = 1.0, std_multiplier: float = 0.0) -> Profile:
        """A copy whose latencies are inflation·(ℓ(b) + std_multiplier·σ(b)): the scheduler's safety margin."""
        if inflation == 1.0 and std_multiplier == 0.0:
            return self
        if inflation <= 0 or std_multiplier < 0:
            raise ProfileError("profile_inflation must be > 0 and std_multiplier >= 0")
        raw = {b: inflation * (v + std_multiplier * self.std(b)) for b, v in self.batch_ms.items()}
        # Adding σ can bend the curve again; re-clean so ℓ(b)/b stays non-increasing.
        cleaned, changes = clean_curve(raw)
        return replace(self, batch_ms=cleaned, changes=self.changes + tuple(changes))

    def restricted_to(self, batches: Iterable[int]) -> Profile:
        """A copy that allows only the given batch sizes (they must be allowed here)."""
        table = {b: self.latency_ms(b) for b in sorted(set(batches))}
        return replace(self, batch_ms=table, interpolate=False)

    def _describe(self) -> str:
        allowed = self.allowed_batches
        if self.interpolate:
            return f"1..{allowed[-1]}"
        return ", ".join(map(str, allowed))

    @staticmethod
    def _interpolated(table: Mapping[int, float], batch: int, *, extrapolate: bool = False) -> float:
        points = sorted(table)
        if batch in table:
            return table[batch]
        if batch <= points[0]:
            return table[points[0]]
        if batch >= points[-1]:
            if not extrapolate or len(points) == 1:
                return table[points[-1]]
            lo, hi = points[-2], points[-1]
        else:
            j = bisect.bisect_left(points, batch)
            lo, hi = points[j - 1], points[j]
        slope = (table[hi] - table[lo]) / (hi - lo)
        return table[lo] + slope * (batch - lo)

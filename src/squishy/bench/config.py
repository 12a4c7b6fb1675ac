"""What one benchmark run is: the models driven (each with its rate and SLO), the server, the arrivals.

Everything here is plain data, checked when built, so a bad setting fails before any connection is
opened. The CLI's string forms (``M:RATE``, ``NAME=SHAPE:DTYPE``, ``KEY=VALUE``) parse here too, so
scripts and the CLI read them the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from squishy.arrivals import Arrivals
from squishy.bench.errors import BenchError

PROTOCOLS = ("http", "grpc")
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)
ParameterValue = bool | int | float | str


@dataclass(frozen=True)
class InputSpec:
    """An input tensor's full shape (batch dimension included) and, optionally, its datatype."""

    name: str
    shape: tuple[int, ...]
    datatype: str | None = None  # None: the model's own

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.shape):
            raise BenchError(f"input '{self.name}': shape {list(self.shape)} has a negative dimension")
        if self.datatype is not None and self.datatype not in DATATYPES:
            raise BenchError(f"input '{self.name}': unknown datatype '{self.datatype}' (one of {', '.join(DATATYPES)})")


ENCODINGS = ("binary", "json")


@dataclass(frozen=True)
class ModelLoad:
    """One model's share of the load: its request rate, its latency SLO and how its requests look."""

    model: str
    rate_per_s: float
    slo_ms: float
    version: str | None = None
    # Shapes for inputs whose metadata has variable dimensions (or to override the metadata's).
    inputs: tuple[InputSpec, ...] = ()
    # Request-level OIP parameters sent with every request (e.g. Triton's ``timeout`` in µs, ``priority``).
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    # Items per request: the size of the batch dimension when the model has one.
    batch_size: int = 1
    # This model's own arrival process (None: the run's); e.g. a replay of a stepped load beside steady ones.
    arrivals: Arrivals | None = None
    # REST only: "binary" (the binary tensor extension, inputs and outputs raw) or "json" (tensors as JSON
    # lists both ways, as a client without the extension sends them).
    encoding: str = "binary"

    def __post_init__(self) -> None:
        if not self.model:
            raise BenchError("a model name is empty")
        if self.encoding not in ENCODINGS:
            raise BenchError(
                f"model '{self.model}': encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}"
            )
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise BenchError(
                f"model '{self.model}': rate must be a positive number of requests/s, got {self.rate_per_s}"
            )
        if not (self.slo_ms > 0 and math.isfinite(self.slo_ms)):
            raise BenchError(f"model '{self.model}': SLO must be a positive number of ms, got {self.slo_ms}")
        if self.batch_size < 1:
            raise BenchError(f"model '{self.model}': batch size must be at least 1, got {self.batch_size}")
        names = [spec.name for spec in self.inputs]
        if len(set(names)) != len(names):
            raise BenchError(f"model '{self.model}': an input is given twice ({', '.join(names)})")


@dataclass(frozen=True)
class BenchConfig:
    """A run: the load per model, where the server is, how arrivals are spaced, how long to measure."""

    models: tuple[ModelLoad, ...]
    url: str = "http://127.0.0.1:8000"  # REST endpoint (protocol "http")
    protocol: str = "http"
    grpc_url: str = "127.0.0.1:8001"  # gRPC endpoint (protocol "grpc")
    arrivals: Arrivals = field(default_factory=Arrivals)
    duration_s: float = 10.0  # measured window, after the warm-up
    warmup_s: float = 2.0  # sent but not counted: connections, caches and the server's queues settle
    seed: int = 0
    # HTTP: connections opened up front (None: 2 ms worth of requests, 16 to 256); more are opened on
    # demand (a request that finds none free waits locally, and that wait counts in its latency) up to
    # max_connections. Opening hundreds at once in the first milliseconds of a fast run stalls both
    # sides, hence the head start.
    initial_connections: int | None = None
    max_connections: int = 1000
    grpc_channels: int = 4  # HTTP/2 connections, requests spread round-robin
    # After the last scheduled request, wait this long for replies; None: max(2 s, 10 × the largest SLO).
    drain_timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            raise BenchError("no model to drive: give at least one")
        names = [m.model for m in self.models]
        if len(set(names)) != len(names):
            raise BenchError(f"a model appears twice in the mix ({', '.join(names)})")
        if self.protocol not in PROTOCOLS:
            raise BenchError(f"unknown protocol '{self.protocol}' (one of {', '.join(PROTOCOLS)})")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise BenchError(f"duration must be a positive number of seconds, got {self.duration_s}")
        if not (self.warmup_s >= 0 and math.isfinite(self.warmup_s)):
            raise BenchError(f"warm-up must be zero or more seconds, got {self.warmup_s}")
        if self.max_connections < 1:
            raise BenchError(f"need at least one connection, got max connections {self.max_connections}")
        if self.initial_connections is not None and not 1 <= self.initial_connections <= self.max_connections:
            raise BenchError(
                f"need 1 ≤ initial connections ≤ max connections, got {self.initial_connections}"
                f" and {self.max_connections}"
            )
        if self.grpc_channels < 1:
            raise BenchError(f"need at least one gRPC channel, got {self.grpc_channels}")
        if self.drain_timeout_s is not None and self.drain_timeout_s < 0:
            raise BenchError(f"drain timeout must be zero or more seconds, got {self.drain_timeout_s}")
        if self.protocol == "http":
            parse_http_url(self.url)

    @property
    def total_rate_per_s(self) -> float:
        return sum(m.rate_per_s for m in self.models)

    @property
    def effective_initial_connections(self) -> int:
        if self.initial_connections is not None:
            return self.initial_connections
        auto = min(256, max(16, math.ceil(self.total_rate_per_s * 0.002)))
        return min(auto, self.max_connections)

    @property
    def effective_drain_timeout_s(self) -> float:
        if self.drain_timeout_s is not None:
            return self.drain_timeout_s
        return max(2.0, 10 * max(m.slo_ms for m in self.models) / 1000)

    def scaled(self, factor: float) -> BenchConfig:
        """The same mix with every model's rate multiplied by ``factor`` (the search moves along this)."""
        models = tuple(dataclasses.replace(m, rate_per_s=m.rate_per_s * factor) for m in self.models)
        return dataclasses.replace(self, models=models)

    def with_total_rate(self, total_rate_per_s: float) -> BenchConfig:
        return self.scaled(total_rate_per_s / self.total_rate_per_s)

    def describe(self) -> dict[str, object]:
        """The settings as JSON-ready data, for reports."""
        return {
            "protocol": self.protocol,
            "url": self.url if self.protocol == "http" else self.grpc_url,
            "models": [
                {
                    "model": m.model,
                    "version": m.version,
                    "rate_per_s": m.rate_per_s,
                    "slo_ms": m.slo_ms,
                    "batch_size": m.batch_size,
                    "inputs": [{"name": s.name, "shape": list(s.shape), "datatype": s.datatype} for s in m.inputs],
                    "parameters": dict(m.parameters),
                    **({"arrivals": m.arrivals.describe()} if m.arrivals is not None else {}),
                }
                for m in self.models
            ],
            "arrivals": self.arrivals.describe(),
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class HttpAddress:
    host: str
    port: int
    base_path: str  # "" or a prefix such as "/serving", without a trailing slash

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_http_url(url: str) -> HttpAddress:
    """``http://host:port[/prefix]`` (or ``host:port``, as tritonclient accepts) → where to connect."""
    text = url if "://" in url else f"http://{url}"
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise BenchError(f"unsupported URL scheme in '{url}': the generator speaks plain http://")
    try:
        port = parts.port or 80
    except ValueError:
        raise BenchError(f"bad port in URL '{url}'") from None
    if not parts.hostname:
        raise BenchError(f"no host in URL '{url}'")
    return HttpAddress(parts.hostname, port, parts.path.rstrip("/"))


# ---------------------------------------------------------------------------------- CLI forms


def parse_model_arg(text: str) -> tuple[str, float | None, float | None]:
    """``M``, ``M:RATE`` or ``M:RATE:SLO_MS`` → (model, rate or None, SLO or None)."""
    name, *rest = text.split(":")
    if not name or len(rest) > 2:
        raise BenchError(f"bad model '{text}': use MODEL, MODEL:RATE or MODEL:RATE:SLO_MS")
    values: list[float | None] = []
    for what, item in zip(("rate", "SLO"), rest, strict=False):
        try:
            values.append(float(item))
        except ValueError:
            raise BenchError(f"bad {what} '{item}' in model '{text}': not a number") from None
    values += [None] * (2 - len(values))
    return name, values[0], values[1]


def parse_input_arg(text: str) -> tuple[str | None, InputSpec]:
    """``[MODEL/]NAME=SHAPE[:DTYPE]`` with SHAPE like ``1,3,224,224`` or ``1x3x224x224``.

    Returns the model it is meant for (None: every model with an input of that name) and the spec.
    """
    target, sep, rest = text.partition("=")
    if not sep or not target or not rest:
        raise BenchError(f"bad input '{text}': use NAME=SHAPE[:DTYPE], e.g. x=1,3,224,224:FP32")
    model: str | None = None
    if "/" in target:
        model, _, target = target.partition("/")
    shape_text, _, datatype = rest.partition(":")
    try:
        shape = tuple(int(d) for d in shape_text.strip("[]").replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise BenchError(f"bad shape '{shape_text}' in input '{text}': use integers like 1,3,224,224") from None
    return model, InputSpec(target, shape, datatype.upper() or None)


def parse_parameter_arg(text: str) -> tuple[str, ParameterValue]:
    """``KEY=VALUE``: true/false → bool, an integer → int, a decimal → float, else the string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise BenchError(f"bad parameter '{text}': use KEY=VALUE")
    value: ParameterValue
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
    return key, value

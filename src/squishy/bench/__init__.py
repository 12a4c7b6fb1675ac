"""Open-loop load generation and goodput-at-SLO search for OIP servers (squishy, Triton, MLServer, ...).

    from squishy.bench import Arrivals, BenchConfig, ModelLoad, SearchSettings, run, search

    config = BenchConfig(
        models=(ModelLoad("resnet", rate_per_s=40, slo_ms=100), ModelLoad("bert", rate_per_s=10, slo_ms=200)),
        url="http://127.0.0.1:8000",  # protocol="grpc", grpc_url="127.0.0.1:8001" for gRPC
        arrivals=Arrivals.gamma(2.0),
        duration_s=10,
        warmup_s=2,
        seed=1,
    )
    result = run(config, isolate=True)  # RunResult: .per_model / .overall Stats, .generator, .log
    found = search(config, SearchSettings(tolerance=0.05), isolate=True)  # SearchResult: .rate_per_s, .best

Modules: ``config`` (what a run is), ``metadata`` and ``payload`` (what a model is sent),
``http_client`` / ``grpc_client`` (the wire), ``records`` and ``stats`` (what happened), ``run``,
``search`` (glue to ``squishy.search``), ``report`` (tables and JSON), ``ceiling`` (the generator's own
limit). When requests are due comes from ``squishy.arrivals``, the simulator's generator too, so a run
and its simulated twin send the same requests at the same times.
"""

from squishy.arrivals import Arrivals, schedule
from squishy.bench.config import BenchConfig, InputSpec, ModelLoad
from squishy.bench.errors import BenchError
from squishy.bench.records import CONNECTION_ERROR, NO_REPLY, RequestLog
from squishy.bench.run import GeneratorUsage, Prepared, RunResult, prepare, run, run_async
from squishy.bench.search import SearchResult, SearchSettings, SearchStep, search
from squishy.bench.stats import Stats

__all__ = [
    "CONNECTION_ERROR",
    "NO_REPLY",
    "Arrivals",
    "BenchConfig",
    "BenchError",
    "GeneratorUsage",
    "InputSpec",
    "ModelLoad",
    "Prepared",
    "RequestLog",
    "RunResult",
    "SearchResult",
    "SearchSettings",
    "SearchStep",
    "Stats",
    "prepare",
    "run",
    "run_async",
    "schedule",
    "search",
]

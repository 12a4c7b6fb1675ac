"""The Open Inference Protocol frontend: REST (8000), gRPC (8001) and Prometheus metrics (8002).

It decodes and validates wire requests against each model's ``ModelSpec``, calls the serving core
(any ``squishy.runtime.api.ModelService``) and encodes the replies. Start it with ``serve`` (async),
``run`` (blocking, for the CLI) or ``start_in_thread`` (tests).
"""

from squishy.frontend.server import (
    BoundPorts,
    FrontendServer,
    ThreadedServer,
    run,
    serve,
    start_in_thread,
)

__all__ = ["BoundPorts", "FrontendServer", "ThreadedServer", "run", "serve", "start_in_thread"]

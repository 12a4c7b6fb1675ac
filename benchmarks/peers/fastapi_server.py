"""The plain peer: FastAPI on uvicorn (uvloop, httptools), ONNX Runtime, no batching.

    PYTHONPATH=benchmarks python -m peers.fastapi_server --repository DIR --port 8000 [--processes 1] [--threads 2]

What a user writes without a serving framework: one ORT session per model, every request run on its own
as soon as an execution thread is free. Defaults to the shape squishy has on this machine: one process
whose event loop parses requests, and a FIFO pool of 2 execution threads (= squishy's 2 slots of 1
intra-op thread; ORT releases the GIL while it computes). ``--processes 2 --threads 1`` is the other
common layout (uvicorn workers sharing the port; the kernel hands each connection to one of them).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os

import uvicorn
from fastapi import FastAPI, Request, Response

from peers import oip

_REPOSITORY_ENV = "SQUISHY_PEER_REPOSITORY"
_THREADS_ENV = "SQUISHY_PEER_THREADS"


def create_app() -> FastAPI:
    """The app, configured from the environment (uvicorn's multi-process mode imports it by name)."""
    models = oip.ModelTable(os.environ[_REPOSITORY_ENV])
    # One session per model shared by the execution threads: ORT's Run is thread-safe, and with one
    # intra-op thread each call computes on the calling thread.
    runners = {name: oip.executor(spec) for name, spec in models.specs.items()}
    # FIFO across all models, at most `threads` inferences at once: one per core, no oversubscription.
    pool = concurrent.futures.ThreadPoolExecutor(int(os.environ.get(_THREADS_ENV, "2")), thread_name_prefix="ort")
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def reply(r: oip.Reply) -> Response:
        return Response(content=r.body, status_code=r.status, headers=r.headers)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    @app.get("/v2/models/{model}")
    async def metadata(model: str) -> Response:
        try:
            return Response(models.metadata(model), media_type="application/json")
        except Exception as exc:
            return reply(oip.error_reply(exc))

    @app.get("/v2/models/{model}/config")
    async def config(model: str) -> Response:
        try:
            return Response(models.config(model), media_type="application/json")
        except Exception as exc:
            return reply(oip.error_reply(exc))

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        body = await request.body()
        try:
            decoded, selections = models.decode(
                model, body, request.headers.get(oip.HEADER_LENGTH), request.headers.get("content-encoding")
            )
            outputs = await asyncio.get_running_loop().run_in_executor(pool, oip.run_one, runners[model], decoded)
            return reply(models.encode(decoded, selections, outputs))
        except Exception as exc:
            return reply(oip.error_reply(exc))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--threads", type=int, default=2, help="execution threads per process")
    args = parser.parse_args()
    os.environ[_REPOSITORY_ENV] = args.repository
    os.environ[_THREADS_ENV] = str(args.threads)
    uvicorn.run(
        "peers.fastapi_server:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.processes if args.processes > 1 else None,
        loop="uvloop",
        http="httptools",
        access_log=False,  # squishy writes no per-request log line either
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()

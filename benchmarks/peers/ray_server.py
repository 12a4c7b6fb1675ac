"""The Ray Serve peer: one application per model, ``@serve.batch`` on ONNX Runtime, OIP over HTTP.

    PYTHONPATH=benchmarks python -m peers.ray_server --repository DIR --port 8000 --plan PLAN.json

Each model is its own Serve application with route prefix ``/v2/models/<m>`` whose ingress is the
batched deployment itself (FastAPI via ``@serve.ingress``), so a request crosses Ray's HTTP proxy and
lands straight in a replica: no extra handle hop (~6 ms here) through a separate router deployment.
In the replica, the request is decoded by squishy's codec, queued by ``@serve.batch``, run as one ORT
call per batch on a worker thread (the replica's event loop keeps accepting and forming the next batch
meanwhile), and answered in OIP binary form.

``PLAN.json`` holds per model the settings ``peers.rules`` derives from the profile (batch size, wait,
replicas, logical CPUs). On SIGHUP the file is read again and the batch settings applied in place
(``user_config``, no replica restart): that is how the caller moves from the calibration run (no
waits, to measure Ray's own latency) to the rule's settings. Prints ``ray peer ready, generation N``
once every application runs the plan's settings; on SIGTERM or SIGINT it shuts Serve and Ray down.

Ray's documented throughput flags (Performance Tuning: user code and router on the replica's main
loop, buffered request-path logs, no log copy to stderr, gRPC from proxy to replicas) are set by the
caller in the environment before Ray starts, since Ray reads them at import in every process.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations (``Request``) at
# run time, and Serve's ingress wrapper does not resolve string annotations (every request got a 422).
import argparse
import asyncio
import concurrent.futures
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from ray import serve

from peers import oip
from peers.rules import RayModelPlan
from squishy.runtime.api import InferRequest

# GET /v2/models/<m> (the route prefix itself) reaches the app as path "", which FastAPI answers with a
# redirect to ".../": the generator's metadata request follows it (once per run, off the measured path).
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def _reply(r: oip.Reply) -> Response:
    return Response(content=r.body, status_code=r.status, headers=r.headers)


@serve.deployment
@serve.ingress(app)
class OipModel:
    """One model: metadata, config and batched inference under ``/v2/models/<model>``."""

    def __init__(self, repository: str, model: str) -> None:
        self._model = model
        self._models = oip.ModelTable(repository, only=(model,))
        self._runner = oip.executor(self._models.spec(model))
        # One thread: the replica runs one batch at a time on its one ORT intra-op thread.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ort")
        self._generation = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch settings arrive as ``user_config`` (Ray's documented way to set them per deployment and
        change them without restarting replicas). The decorator's settings belong to the class, and
        each replica is its own process, so every model gets its own values."""
        self.run_batch.set_max_batch_size(int(user_config["max_batch_size"]))
        self.run_batch.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        self._generation = int(user_config.get("generation", 0))

    @app.get("/")
    async def metadata(self) -> Response:
        return Response(self._models.metadata(self._model), media_type="application/json")

    @app.get("/config")
    async def config(self) -> Response:
        return Response(self._models.config(self._model), media_type="application/json")

    @app.get("/ready")
    async def ready(self) -> Response:
        doc = {"name": self._model, "ready": True, "generation": self._generation}
        return Response(json.dumps(doc), media_type="application/json")

    @app.post("/infer")
    async def infer(self, request: Request) -> Response:
        body = await request.body()
        try:
            decoded, selections = self._models.decode(
                self._model, body, request.headers.get(oip.HEADER_LENGTH), request.headers.get("content-encoding")
            )
            outputs = await self.run_batch(decoded)
            return _reply(self._models.encode(decoded, selections, outputs))
        except Exception as exc:
            return _reply(oip.error_reply(exc))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=1)
    async def run_batch(self, requests: list[InferRequest]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, oip.run_batch, self._runner, requests)


def start_ray(port: int, cores: int) -> None:
    import ray

    ray.init(
        num_cpus=cores,
        include_dashboard=False,  # not on the request path; it would only add CPU noise on 2 cores
        log_to_driver=False,
        logging_level="warning",
    )
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )


def deploy(repository: str, plans: list[RayModelPlan], generation: int) -> None:
    """Run (or update) one application per model; returns once every one is running its settings."""
    for plan in plans:
        deployment = OipModel.options(
            name=plan.model,
            num_replicas=plan.replicas,
            max_ongoing_requests=plan.max_ongoing_requests,
            ray_actor_options={"num_cpus": plan.num_cpus},
            user_config={
                "max_batch_size": plan.max_batch_size,
                "batch_wait_timeout_s": plan.batch_wait_timeout_s,
                "generation": generation,
            },
        )
        serve.run(
            deployment.bind(repository, plan.model),
            name=plan.model,
            route_prefix=f"/v2/models/{plan.model}",
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )


def _read_plan(path: Path) -> tuple[list[RayModelPlan], int]:
    doc = json.loads(path.read_text())
    return [RayModelPlan.from_dict(d) for d in doc["deployments"]], int(doc.get("generation", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plan", type=Path, required=True, help='JSON {"generation": N, "deployments": [...]}')
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    stop = threading.Event()
    reload = threading.Event()
    import ray

    try:
        start_ray(args.port, args.cores)
        plans, generation = _read_plan(args.plan)
        deploy(args.repository, plans, generation)
        # After ray.init: it installs its own fatal-signal handler for SIGTERM, which would kill this
        # driver without shutting Ray down (orphaning its agents). Python's handler replaces it.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        # SIGHUP: read the plan file again and apply it (new batch settings, same replicas).
        signal.signal(signal.SIGHUP, lambda *_: reload.set())
        print(f"ray peer ready, generation {generation}", flush=True)
        while not stop.wait(0.2):  # a timed wait, so the signal handlers surely get to run
            if reload.is_set():
                reload.clear()
                plans, generation = _read_plan(args.plan)
                deploy(args.repository, plans, generation)
                print(f"ray peer ready, generation {generation}", flush=True)
    finally:
        # Serve first (replicas, proxy, controller), then Ray itself (raylet, GCS, workers).
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()

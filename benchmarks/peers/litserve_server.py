"""The LitServe peer: Lightning AI's LitServe, a ``LitAPI`` answering OIP JSON for ``double``, batched.

    benchmarks/.venvs/litserve/bin/python benchmarks/peers/litserve_server.py --port 8000 [--max-batch-size 64]
        [--batch-wait-ms 2] [--workers 1] [--api-servers 1] [--no-fast-queue]

Runs in its own venv (``benchmarks/peers/setup.py litserve``). LitServe has no OIP of its own, so the
``LitAPI`` speaks it: ``decode_request`` takes the OIP JSON body (``inputs[0]``: ``x``, FP32, its
``shape`` and ``data``, flat or nested) to a numpy array, ``batch`` keeps the arrays of a batch as a
list, ``predict`` joins them along the batch dimension, computes ``2·x`` in one numpy call and splits
the result back, and ``encode_response`` writes the OIP reply (``model_name``, ``outputs``: ``y``).
The endpoint is ``POST /v2/models/double/infer`` (``api_path``); ``GET /v2/models/double`` (metadata),
``/v2/models/double/config`` (``max_batch_size``), ``/v2/health/ready`` and ``/v2/health/live`` are
plain FastAPI routes added to LitServe's app, so the generator reads the model as from any OIP server.

Tuned for the 2 cores: ``--workers 1`` inference worker process (``workers_per_device`` on one CPU
"device") and ``--api-servers 1`` uvicorn process (LitServe's default: one per worker), so the two
processes on the request path get a core each; ``fast_queue`` (ZeroMQ between them instead of
multiprocessing queues, LitServe's documented faster transport) on; batching ``max_batch_size`` /
``batch_timeout`` as given; uvloop + httptools, no access log, no client file, no OpenAPI page.
LitServe shuts its workers down on KeyboardInterrupt only; SIGTERM is turned into one here.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException, Response

MODEL = "double"
WIDTH = 4
_METADATA = (
    b'{"name":"double","versions":["1"],"platform":"litserve",'
    b'"inputs":[{"name":"x","datatype":"FP32","shape":[-1,4]}],'
    b'"outputs":[{"name":"y","datatype":"FP32","shape":[-1,4]}]}'
)


class OipDouble(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.version = "1"

    # ``request`` stays unannotated: LitServe builds the endpoint from this signature, and any annotation
    # (a string one here, with postponed evaluation) turns the body into a query parameter (422s).
    def decode_request(self, request, **kwargs: Any) -> tuple[np.ndarray, Any]:  # type: ignore[no-untyped-def]
        tensor = request["inputs"][0]
        if tensor.get("name") != "x" or tensor.get("datatype") != "FP32":
            raise HTTPException(400, "model double takes one input: x, FP32")
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        if x.ndim != 2 or x.shape[1] != WIDTH:
            raise HTTPException(400, f"x must be [-1, {WIDTH}], got {list(x.shape)}")
        return x, request.get("id")

    def batch(self, inputs: list[tuple[np.ndarray, Any]]) -> list[tuple[np.ndarray, Any]]:
        return inputs  # joined in predict, where the split points are known

    def predict(self, x: Any, **kwargs: Any) -> Any:
        if isinstance(x, tuple):  # not batched
            return 2 * x[0], x[1]
        arrays = [a for a, _ in x]
        y = 2 * np.concatenate(arrays)
        ends = np.cumsum([len(a) for a in arrays])[:-1]
        return [(part, rid) for part, (_, rid) in zip(np.split(y, ends), x, strict=True)]

    def unbatch(self, output: Any) -> Any:
        return output

    def encode_response(self, output: tuple[np.ndarray, Any], **kwargs: Any) -> dict[str, Any]:
        y, rid = output
        reply: dict[str, Any] = {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}],
        }
        if rid is not None:
            reply["id"] = rid
        return reply


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="LitServe's batch_timeout")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes (workers_per_device)")
    parser.add_argument("--api-servers", type=int, default=1, help="uvicorn API server processes")
    parser.add_argument("--no-fast-queue", action="store_true", help="multiprocessing queues instead of ZeroMQ")
    args = parser.parse_args()

    api = OipDouble(
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_wait_ms / 1000.0,
        api_path=f"/v2/models/{MODEL}/infer",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers,
        timeout=30,
        fast_queue=not args.no_fast_queue,
        disable_openapi_url=True,
        track_requests=False,
    )
    config = f'{{"name":"double","max_batch_size":{args.max_batch_size}}}'.encode()

    @server.app.get(f"/v2/models/{MODEL}")
    async def metadata() -> Response:
        return Response(_METADATA, media_type="application/json")

    @server.app.get(f"/v2/models/{MODEL}/config")
    async def model_config() -> Response:
        return Response(config, media_type="application/json")

    @server.app.get("/v2/health/live")
    @server.app.get("/v2/health/ready")
    @server.app.get(f"/v2/models/{MODEL}/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    signal.signal(signal.SIGTERM, _interrupt)  # LitServe's graceful shutdown runs on KeyboardInterrupt
    server.run(
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
        loop="uvloop",
        http="httptools",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()

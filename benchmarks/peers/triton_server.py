"""The Triton peer: NVIDIA Triton Inference Server itself (CPU only), through PyTriton, serving ``double``.

    benchmarks/.venvs/triton/bin/python benchmarks/peers/triton_server.py --port 8000 [--max-batch-size 64]
        [--batch-wait-ms 2] [--instances 1]

Runs in its own venv (``benchmarks/peers/setup.py triton``: Python 3.12, ``nvidia-pytriton``, whose
wheel ships the ``tritonserver`` binary; that Python's ``lib/`` must be on ``LD_LIBRARY_PATH`` for the
binary's Python-backend stub). Requests reach Triton's own C++ HTTP front end (KServe v2 / OIP, JSON or
binary tensors) and its dynamic batcher (``max_batch_size``, ``max_queue_delay_microseconds``); each
batch goes to a Python callable, ``y = 2·x`` in numpy, in this process (PyTriton's proxy model in
Triton's Python backend hands it over through shared memory). ``--instances N`` binds N copies of the
callable (Triton model instances, each its own thread here). No squishy code is imported: the venv
has none.

Model ``double``: input ``x`` FP32 [-1, 4], output ``y`` FP32 [-1, 4]; ``GET /v2/models/double`` and
``/v2/models/double/config`` are Triton's, so the generator reads the batch dimension from them.
Readiness: ``/v2/health/ready``. SIGTERM or SIGINT stops Triton (and the processes it started).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

WIDTH = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@batch
def double(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": (2 * x).astype(np.float32, copy=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="HTTP (OIP REST) port")
    parser.add_argument("--grpc-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="dynamic batcher's max queue delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances (copies of the callable)")
    args = parser.parse_args()

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port or _free_port(),
        metrics_port=args.metrics_port or _free_port(),
        log_verbose=0,
        exit_timeout_secs=2,
    )
    stop = threading.Event()
    with Triton(config=config) as triton:
        triton.bind(
            model_name="double",
            infer_func=[double] * args.instances,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(WIDTH,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(WIDTH,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=round(1000 * args.batch_wait_ms)),
            ),
            strict=False,
        )
        triton.run()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        print(f"triton peer ready on http://127.0.0.1:{args.port}", flush=True)
        while not stop.wait(1.0) and triton.is_alive():
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()

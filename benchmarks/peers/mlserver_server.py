"""The MLServer peer: Seldon's Python OIP server, a custom ``MLModel`` for ``double``, adaptive batching.

    benchmarks/.venvs/mlserver/bin/python benchmarks/peers/mlserver_server.py --port 8000 [--max-batch-size 64]
        [--batch-wait-ms 2]

Runs in its own venv (``benchmarks/peers/setup.py mlserver``: MLServer's pins clash with squishy's).
Started the way MLServer's documentation starts a server, ``mlserver start DIR``: this module writes
DIR (a temporary folder) with ``settings.json`` (the ports, ``parallel_workers: 0`` so inference runs
in the server's own process with no worker pool hop, ``debug: false`` so no access log line per
request) and ``model-settings.json`` (model ``double``, input ``x`` FP32 [-1, 4], output ``y``,
adaptive batching ``max_batch_size`` / ``max_batch_time``), then replaces itself with the
``mlserver`` CLI (``exec``: signals go straight to MLServer, which shuts down on SIGTERM/SIGINT).

The model, ``DoubleModel`` below, decodes ``x`` with MLServer's ``NumpyCodec``, computes ``2·x`` in
numpy and encodes ``y`` the same way: MLServer's own REST front end parses and writes the OIP JSON.
MLServer has no ``/config`` endpoint; the generator then takes the leading -1 as the batch dimension.
Readiness: ``/v2/health/ready`` (and ``/v2/models/double/ready``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

WIDTH = 4
HERE = Path(__file__).resolve().parent


class DoubleModel(MLModel):
    """y = 2·x; with adaptive batching MLServer hands it the requests joined along the first dimension."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = (2 * np.asarray(x, dtype=np.float32)).astype(np.float32, copy=False)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name="y", payload=y)],
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(folder: Path, port: int, grpc_port: int, metrics_port: int, max_batch: int, wait_ms: float) -> None:
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "debug": False,
        "load_models_at_startup": True,
    }
    model = {
        "name": "double",
        "implementation": "mlserver_server.DoubleModel",
        "max_batch_size": max_batch,
        "max_batch_time": wait_ms / 1000.0,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, WIDTH]}],
        "parameters": {"version": "1"},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    model_dir = folder / "double"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model-settings.json").write_text(json.dumps(model, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="HTTP (OIP REST) port")
    parser.add_argument("--grpc-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--max-batch-size", type=int, default=64, help="adaptive batching: most requests per batch")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="adaptive batching: max_batch_time")
    parser.add_argument("--folder", type=Path, help="where the settings go (default: a new temporary folder)")
    args = parser.parse_args()

    folder = args.folder or Path(tempfile.mkdtemp(prefix="mlserver-double-"))
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port = args.grpc_port or _free_port()
    metrics_port = args.metrics_port or _free_port()
    write_config(folder, args.port, grpc_port, metrics_port, args.max_batch_size, args.batch_wait_ms)
    # The implementation is imported by name ("mlserver_server.DoubleModel"): this folder on the path.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    mlserver = Path(sys.executable).with_name("mlserver")
    print(f"mlserver peer: {mlserver} start {folder}", flush=True)
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])


if __name__ == "__main__":
    main()

"""Peer servers that ``benchmarks/bench_peers.py`` measures squishy against (not part of the package).

Every peer answers the same OIP REST binary-tensor requests as squishy, decoded and encoded by squishy's
own codec (``oip``), and runs the same ONNX Runtime executor (1 intra-op thread, spinning off), so the
wire format and the executor cost the same everywhere and only the serving design differs:

- ``fastapi_server``: FastAPI + uvicorn + ONNX Runtime, no batching (what a plain Python service is).
- ``ray_server``: Ray Serve, one application per model, ``@serve.batch`` tuned from squishy's profile.
- ``rules``: how the Ray Serve batch settings and replica counts follow from the profile (pure).
- ``procs``: starting, watching (CPU, RSS, PSS over the process tree) and stopping server processes.

The server modules run as ``python -m peers.<module>`` with ``benchmarks/`` on ``PYTHONPATH``.
"""

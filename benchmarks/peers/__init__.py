"""Peer servers that ``benchmarks/bench_peers.py`` measures squishy against (not part of the package).

Every peer answers the same OIP REST binary-tensor requests as squishy, decoded and encoded by squishy's
own codec (``oip``), and runs the same ONNX Runtime executor (1 intra-op thread, spinning off), so the
wire format and the executor cost the same everywhere and only the serving design differs:

- ``fastapi_server``: FastAPI + uvicorn + ONNX Runtime, no batching (what a plain Python service is).
- ``ray_server``: Ray Serve, one application per model, ``@serve.batch`` tuned from squishy's profile.
- ``triton_server``, ``mlserver_server``, ``litserve_server``: Triton (PyTriton's ``tritonserver``),
  MLServer and LitServe serving the trivial model ``double`` with OIP JSON, each run by its own venv's
  python (``setup``: ``benchmarks/.venvs/<peer>`` from ``requirements/<peer>.txt``); they import no
  squishy code. ``benchmarks/bench_overload.py`` starts them (and ``ray_server``, from its venv).
- ``rules``: how the Ray Serve batch settings and replica counts follow from the profile (pure).
- ``procs``: starting, watching (CPU, RSS, PSS over the process tree) and stopping server processes.

The bench_peers server modules run as ``python -m peers.<module>`` with ``benchmarks/`` on ``PYTHONPATH``;
the three above run as scripts (``python benchmarks/peers/triton_server.py ...``).
"""

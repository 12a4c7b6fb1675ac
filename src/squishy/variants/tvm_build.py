"""Compile an ONNX model with TVM (Relax) for the CPU into the shared library the runtime's
TvmExecutor loads (platform ``tvm_relax``, ``model.so``). Needs the optional ``tvm`` extra.

No tuning: TVM's default CPU pipeline lowers every operator to its generic loop nest, which is what this
build measures; ``docs/variants.md`` ("The TVM build") gives the numbers and what MetaSchedule tuning
changed. A dynamic leading dimension stays symbolic, so one library runs every batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squishy.errors import SquishyError

INSTALL_HINT = "pip install 'squishy[tvm]'"
# Plain ``llvm`` (baseline x86-64), not ``mcpu`` of this CPU: on the untuned default pipeline the
# baseline build ran 13-20% faster than {"mcpu": "znver4"} on this machine's Zen 4 for the example CNN
# (3.30 → 2.87 ms at batch 1, 50.8 → 40.8 ms at 16) and the same for the digits MLP, and it runs on any
# x86-64 CPU. TVM 0.27 takes targets as dicts; its old "llvm -mcpu=..." strings are refused.
DEFAULT_TARGET: dict[str, Any] = {"kind": "llvm"}


class TvmUnavailableError(SquishyError):
    """TVM is not installed, or cannot import or compile this model; the message says which."""


@dataclass(frozen=True)
class TvmBuild:
    path: Path
    target: dict[str, Any]  # TVM's target dict, e.g. {"kind": "llvm", "mcpu": "znver4"}
    import_s: float
    compile_s: float  # compiling and exporting the library

    @property
    def target_note(self) -> str:
        """``TVM llvm`` or ``TVM llvm mcpu=znver4``: with an ``mcpu``, the library runs only on CPUs with
        that one's instruction set."""
        return "TVM " + " ".join(str(v) if k == "kind" else f"{k}={v}" for k, v in self.target.items())


def compile_onnx(source: str | Path, target_path: str | Path, target: dict[str, Any] | None = None) -> TvmBuild:
    """Import ``source`` with TVM's Relax ONNX frontend, compile it for ``target`` (default
    ``DEFAULT_TARGET``) and export the Relax VM library to ``target_path``. Raises TvmUnavailableError."""
    import onnx

    try:
        import tvm
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError:
        raise TvmUnavailableError(f"needs TVM ({INSTALL_HINT})") from None

    started = time.perf_counter()
    try:
        module = from_onnx(onnx.load(str(source)))
    except Exception as exc:  # the frontend raises whatever an unsupported operator leads to
        raise TvmUnavailableError(f"TVM cannot import {source}: {_one_line(exc)}") from None
    imported = time.perf_counter()
    wanted = dict(target or DEFAULT_TARGET)
    try:
        executable = tvm.compile(module, target=tvm.target.Target(wanted))
        executable.export_library(str(target_path))
    except Exception as exc:
        raise TvmUnavailableError(f"TVM cannot compile {source} for {wanted}: {_one_line(exc)}") from None
    return TvmBuild(Path(target_path), wanted, imported - started, time.perf_counter() - imported)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]

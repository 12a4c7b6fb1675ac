"""The TVM build against ONNX Runtime: compile time and ms per batch, through squishy's own executors.

    .venv/bin/python benchmarks/bench_tvm.py [--models clutter-w16,digits] [--batches 1,4,16] [--rounds 5]
    .venv/bin/python benchmarks/bench_tvm.py --tune 16 --trials-per-task 32 [--models clutter-w16]

Each model (``examples/ladder/<m>`` or ``examples/repository/<m>``; build them first with
``python -m squishy.variants.ladder examples/ladder`` and ``squishy build-examples examples/repository``) is
compiled by ``squishy.variants.tvm_build.compile_onnx`` (TVM Relax, untuned, ``llvm``), then the
``OnnxRuntimeExecutor`` and the ``TvmExecutor`` run the same random batch in alternating rounds on one
thread each: per round the median of at least 5 runs (about 200 inputs' worth); the table prints the
median over rounds and the ratio TVM / ONNX Runtime. Needs ``pip install 'squishy[tvm]'``.

``--tune B``: MetaSchedule tuning of the first model at the static batch B (tuning needs static shapes),
target ``llvm`` with this CPU's ``mcpu`` and one core, ``--trials-per-task`` trials for each task, a random
cost model (the default one needs xgboost); prints how long tuning took and ℓ(B) tuned, untuned and in ONNX
Runtime. Builder workers import ``tvm.s_tir.tensor_intrin``, which takes about 30 s here, so the builder's
timeout is raised from its default 30 s. Not part of ``squishy variants``: see docs/variants.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOTS = (Path("examples/ladder"), Path("examples/repository"))


def spec_of(model: str) -> Any:
    from squishy.runtime.repository import ModelRepository

    for root in ROOTS:
        if (root / model / "config.pbtxt").exists():
            repository = ModelRepository(root)
            repository.load(model)
            return repository.spec(model)
    raise SystemExit(f"no model {model!r} in {', '.join(map(str, ROOTS))}: build the examples first")


def per_batch_ms(executor: Any, inputs: dict[str, np.ndarray], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        executor.run(inputs)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def tune(model: str, batch: int, trials_per_task: int, rounds: int) -> dict:
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import meta_schedule as ms

    from squishy.runtime.api import DATATYPES
    from squishy.runtime.executors import OnnxRuntimeExecutor, TvmExecutor
    from squishy.runtime.repository import PLATFORM_TVM
    from squishy.variants.tvm_build import compile_onnx

    spec = spec_of(model)
    work = Path(tempfile.mkdtemp(prefix="squishy-tune-"))
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": 1})
    shapes = {t.name: [batch, *t.dims] for t in spec.inputs}
    module = from_onnx(onnx.load(str(spec.model_path)), shape_dict=shapes)
    started = time.perf_counter()
    with target:
        lowered = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
        module = tvm.transform.Sequential([*lowered, relax.get_pipeline("zero")])(module)
    tasks = ms.relax_integration.extract_tasks(module, target)
    print(f"{model}: {len(tasks)} tuning tasks at batch {batch}, {trials_per_task} trials each", flush=True)
    ms.relax_integration.tune_relax(
        module,
        params={},
        target=target,
        work_dir=str(work / "database"),
        max_trials_global=trials_per_task * len(tasks),
        max_trials_per_task=trials_per_task,
        num_trials_per_iter=trials_per_task,
        builder=ms.builder.LocalBuilder(max_workers=2, timeout_sec=180),
        cost_model="random",
        seed=0,
    )
    tuning_s = time.perf_counter() - started
    with target:
        module = relax.transform.MetaScheduleApplyDatabase(str(work / "database"))(module)
    tvm.compile(module, target=target).export_library(str(work / "tuned.so"))
    untuned = compile_onnx(spec.model_path, work / "untuned.so")
    inputs = {t.name: np.random.default_rng(0).standard_normal((batch, *t.dims)).astype(DATATYPES[t.datatype])
              for t in spec.inputs}  # fmt: skip
    executors = {
        "onnxruntime": OnnxRuntimeExecutor(spec, 1),
        "tvm_untuned": TvmExecutor(replace(spec, platform=PLATFORM_TVM, model_path=untuned.path), 1),
        "tvm_tuned": TvmExecutor(replace(spec, platform=PLATFORM_TVM, model_path=work / "tuned.so"), 1),
    }
    timings: dict[str, list[float]] = {name: [] for name in executors}
    for executor in executors.values():
        executor.run(inputs)
    for _ in range(rounds):
        for name, executor in executors.items():
            timings[name].append(per_batch_ms(executor, inputs, max(5, 200 // batch)))
    row = {"model": model, "batch": batch, "tasks": len(tasks), "trials_per_task": trials_per_task,
           "tuning_s": tuning_s, **{f"{name}_ms": statistics.median(t) for name, t in timings.items()}}  # fmt: skip
    print(
        f"  tuning {tuning_s / 60:.1f} min; batch {batch}: ONNX Runtime {row['onnxruntime_ms']:.3f} ms, "
        f"TVM untuned {row['tvm_untuned_ms']:.3f} ms, tuned {row['tvm_tuned_ms']:.3f} ms "
        f"(tuned / ORT {row['tvm_tuned_ms'] / row['onnxruntime_ms']:.1f}x)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="clutter-w16,digits")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tune", type=int, help="tune the first model at this static batch size instead")
    parser.add_argument("--trials-per-task", type=int, default=32)
    args = parser.parse_args()
    if args.tune is not None:
        row = tune(args.models.split(",")[0], args.tune, args.trials_per_task, args.rounds)
        write("tvm-tune", [row])
        return
    from squishy.runtime.api import DATATYPES
    from squishy.runtime.executors import OnnxRuntimeExecutor, TvmExecutor
    from squishy.runtime.repository import PLATFORM_TVM
    from squishy.variants.tvm_build import compile_onnx

    rows = []
    work = Path(tempfile.mkdtemp(prefix="squishy-bench-tvm-"))
    for model in args.models.split(","):
        spec = spec_of(model)
        build = compile_onnx(spec.model_path, work / f"{model}.so")
        print(f"{model}: TVM import {build.import_s:.2f} s, compile and export {build.compile_s:.2f} s", flush=True)
        ort_executor = OnnxRuntimeExecutor(spec, 1)
        tvm_executor = TvmExecutor(replace(spec, platform=PLATFORM_TVM, model_path=build.path), 1)
        rng = np.random.default_rng(0)
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = {t.name: rng.standard_normal((batch, *t.dims)).astype(DATATYPES[t.datatype]) for t in spec.inputs}
            runs = max(5, 200 // batch)
            for executor in (ort_executor, tvm_executor):
                executor.run(inputs)  # warm-up
            ort_ms, tvm_ms = [], []
            for _ in range(args.rounds):
                ort_ms.append(per_batch_ms(ort_executor, inputs, runs))
                tvm_ms.append(per_batch_ms(tvm_executor, inputs, runs))
            row = {
                "model": model,
                "batch": batch,
                "onnxruntime_ms": statistics.median(ort_ms),
                "tvm_ms": statistics.median(tvm_ms),
                "compile_s": build.compile_s,
            }
            row["tvm_over_onnxruntime"] = row["tvm_ms"] / row["onnxruntime_ms"]
            rows.append(row)
            print(
                f"  batch {batch:>3}: ONNX Runtime {row['onnxruntime_ms']:8.4f} ms  TVM {row['tvm_ms']:8.4f} ms  "
                f"TVM / ORT {row['tvm_over_onnxruntime']:.1f}x",
                flush=True,
            )
    write("tvm", rows)


def write(name: str, rows: list[dict]) -> None:
    out = Path("results/variants") / f"{name}-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rows": rows}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

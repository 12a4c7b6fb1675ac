"""Executors: run one batch of one model. The duty-cycle loop above decides what and when; this only runs.

``Executor.run(inputs, output_names)`` takes numpy arrays keyed by input name (the batch already
concatenated along the leading dimension) and returns the requested outputs. ONNX Runtime, PyTorch and
TVM release the GIL while they compute, so a backend drives each executor from its own worker thread.
"""

from __future__ import annotations

import abc
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.cluster.devices import DeviceError, onnxruntime_providers, torch_device
from squishy.profiles import Profile
from squishy.runtime.api import DATATYPES, InternalError, ModelSpec

# Whether ORT's intra-op worker threads busy-wait for work between operators. Measured on this 2-vCPU
# machine (AMD EPYC KVM guest, ORT 1.32, 2026-11-24; medians of 6 alternating 2-s rounds, executors running
# back to back in threads, ms per batch):
#   two executors x 2 intra-op threads (4 threads on 2 cores): resnet18-half b=4  86.3 spinning vs 51.3 not;
#                                                              smallcnn b=8        4.85 spinning vs 2.29 not
#   one executor x 2 threads, alone:                           resnet18-half b=4  29.2 vs 28.6; smallcnn 1.29 vs 1.24
#   two executors x 1 thread: ORT has no worker pool, so the setting does nothing (the runs differed only
#   by this shared VM's run-to-run noise, up to ~30%).
# Spinners burn the cores the other executor needs, halving throughput when executors share cores, and
# gain nothing measurable alone. squishy packs several models per machine, so spinning is off.
DEFAULT_ALLOW_SPINNING = False

EXECUTOR_KINDS = ("auto", "onnxruntime", "torch", "tvm", "null")

# The platform each executor kind runs (``auto`` picks by it); the names are the repository's platforms.
KIND_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch", "tvm": "tvm_relax"}
TVM_INSTALL_HINT = "pip install 'squishy[tvm]'"


class ExecutorError(InternalError):
    """An executor could not be created or failed to run a batch; the message names the model and why."""


class SlotLostError(ExecutorError):
    """The process that runs a slot's executors is gone (a Ray actor, or its whole node, died): the slot
    leaves the plan and the batch it held is retried elsewhere."""


def _check_loadable(spec: ModelSpec, threads: int) -> None:
    if spec.model_path is None:
        raise ExecutorError(f"model {spec.name!r}: no model file to load")
    if threads < 1:
        raise ExecutorError(f"model {spec.name!r}: threads must be >= 1, got {threads}")


class Executor(abc.ABC):
    """Runs one batch of one model version; not thread-safe: one thread drives one executor."""

    spec: ModelSpec

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run one batch; ``output_names`` empty means every output of the spec."""

    def close(self) -> None:  # noqa: B027 - executors without resources need not override it
        """Release the model (sessions, memory); the executor must not be used afterwards."""

    def cancel(self) -> bool:
        """Ask the run in flight to stop (from another thread), as the watchdog does for a slot that hangs.
        Returns whether this executor can stop a run at all; one that cannot (a thread cannot be killed)
        is left to finish on its own while a fresh worker takes over its slot."""
        return False

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _outputs_wanted(self, output_names: Sequence[str]) -> list[str]:
        known = [t.name for t in self.spec.outputs]
        if not output_names:
            return known
        unknown = [n for n in output_names if n not in known]
        if unknown:
            raise ExecutorError(f"model {self.spec.name!r} has no output {unknown[0]!r} (outputs: {', '.join(known)})")
        return list(output_names)


class OnnxRuntimeExecutor(Executor):
    """One ONNX Runtime ``InferenceSession`` pinned to ``threads`` intra-op threads on the CPU.

    Inter-op parallelism is off (sequential execution, one inter-op thread): squishy gets parallelism by
    running several executors side by side, and operator-level parallelism inside one session just
    competes with them. Graph optimizations are all on (constant folding, fusions, layout).
    """

    def __init__(self, spec: ModelSpec, threads: int = 1, *, allow_spinning: bool = DEFAULT_ALLOW_SPINNING) -> None:
        import onnxruntime as ort

        _check_loadable(spec, threads)
        self.spec = spec
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise in a server log
        self._run_options = ort.RunOptions
        self._running: Any = None  # the RunOptions of the run in flight
        try:
            providers = onnxruntime_providers(spec.device)
        except DeviceError as exc:
            raise ExecutorError(f"model {spec.name!r}: {exc}") from None
        try:
            self._session: Any = ort.InferenceSession(str(spec.model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ExecutorError(
                f"model {spec.name!r}: ONNX Runtime cannot load {spec.model_path}: {_one_line(exc)}"
            ) from None

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if self._session is None:
            raise ExecutorError(f"model {self.spec.name!r}: executor is closed")
        names = self._outputs_wanted(output_names)
        # A run's own options, so that ``cancel`` can stop exactly this run (ORT checks the flag between
        # operators and inside Loop iterations).
        options = self._run_options()
        self._running = options
        try:
            values = self._session.run(names, dict(inputs), options)
        except Exception as exc:
            if options.terminate:
                raise ExecutorError(f"model {self.spec.name!r}: the run was stopped (it hung)") from None
            raise ExecutorError(f"model {self.spec.name!r}: ONNX Runtime failed: {_one_line(exc)}") from None
        finally:
            self._running = None
        return dict(zip(names, values, strict=True))

    def cancel(self) -> bool:
        running = self._running
        if running is not None:
            running.terminate = True
        return True

    def close(self) -> None:
        self._session = None


class TorchExecutor(Executor):
    """A TorchScript module (``torch.jit.load``) on the CPU, or on ``cuda:<i>`` when the model's
    ``instance_group`` asks for GPU i (``squishy.cluster.devices``). Needs the optional ``torch`` extra.

    The module's ``forward`` takes the config's inputs positionally, in config order, and returns one
    tensor or a tuple/list in the config's output order. ``torch.set_num_threads`` is process-wide, so
    all Torch executors in one process share the last thread count set.
    """

    def __init__(self, spec: ModelSpec, threads: int = 1) -> None:
        try:
            import torch
        except ImportError:
            raise ExecutorError(
                f"model {spec.name!r}: platform {spec.platform} needs PyTorch (pip install torch==2.13.0)"
            ) from None
        _check_loadable(spec, threads)
        self.spec = spec
        self._torch = torch
        try:
            self._device = torch_device(spec.device)
        except DeviceError as exc:
            raise ExecutorError(f"model {spec.name!r}: {exc}") from None
        torch.set_num_threads(threads)
        try:
            with warnings.catch_warnings():
                # torch 2.13 marks TorchScript deprecated; it is still the format Triton's pytorch_libtorch
                # repositories hold, so loading it is this executor's job and the warning is noise.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(spec.model_path), map_location=self._device)
        except Exception as exc:
            raise ExecutorError(
                f"model {spec.name!r}: cannot load TorchScript {spec.model_path}: {_one_line(exc)}"
            ) from None
        self._module: Any = module.eval()

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if self._module is None:
            raise ExecutorError(f"model {self.spec.name!r}: executor is closed")
        names = self._outputs_wanted(output_names)
        torch = self._torch
        try:
            args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])).to(self._device) for t in self.spec.inputs]
        except KeyError as exc:
            raise ExecutorError(f"model {self.spec.name!r}: missing input {exc.args[0]!r}") from None
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:
            raise ExecutorError(f"model {self.spec.name!r}: TorchScript failed: {_one_line(exc)}") from None
        values = list(result) if isinstance(result, tuple | list) else [result]
        all_names = [t.name for t in self.spec.outputs]
        if len(values) != len(all_names):
            raise ExecutorError(
                f"model {self.spec.name!r}: TorchScript returned {len(values)} outputs, "
                f"the config lists {len(all_names)}"
            )
        by_name = dict(zip(all_names, values, strict=True))
        return {n: by_name[n].detach().cpu().numpy() for n in names}

    def close(self) -> None:
        self._module = None


class TvmExecutor(Executor):
    """A TVM Relax VM executable compiled to a shared library (``model.so``), run on the CPU with
    ``threads`` threads. Needs the optional ``tvm`` extra.

    The library's ``main`` takes the config's inputs positionally, in config order, and returns one tensor
    or a tuple in the config's output order (``squishy variants`` writes the config that way). TVM's thread
    pool belongs to the OS thread that calls it, so the thread count is set in ``run``, on the calling
    thread, whenever it differs from what that thread last ran with. Only loops a schedule marked parallel
    use more than one thread; the untuned ``squishy variants`` build has none (see docs/variants.md).
    """

    def __init__(self, spec: ModelSpec, threads: int = 1) -> None:
        try:
            import tvm
            from tvm import relax
        except ImportError:
            raise ExecutorError(
                f"model {spec.name!r}: platform {spec.platform} needs TVM ({TVM_INSTALL_HINT})"
            ) from None
        _check_loadable(spec, threads)
        self.spec = spec
        self.threads = threads
        _tvm_process_settings(threads)
        self._tvm = tvm
        self._device = tvm.cpu(0)
        try:
            library = tvm.runtime.load_module(str(spec.model_path))
            self._vm: Any = relax.VirtualMachine(library, self._device)
            self._main: Any = self._vm["main"]
        except Exception as exc:  # TVM raises its own error types (TVMError, AttributeError, ...)
            raise ExecutorError(
                f"model {spec.name!r}: TVM cannot load {spec.model_path} as a Relax VM library: {_one_line(exc)}"
            ) from None
        self._configure_threadpool: Any = tvm.get_global_func("runtime.config_threadpool")
        self._input_dtypes = {t.name: DATATYPES.get(t.datatype) for t in spec.inputs}

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if self._main is None:
            raise ExecutorError(f"model {self.spec.name!r}: executor is closed")
        names = self._outputs_wanted(output_names)
        args = []
        for tensor in self.spec.inputs:
            array = inputs.get(tensor.name)
            if array is None:
                raise ExecutorError(f"model {self.spec.name!r}: missing input {tensor.name!r}")
            wanted = self._input_dtypes[tensor.name]
            # TVM's own dtype mismatch error names the compiled function's parameter, not the input.
            if wanted is not None and array.dtype != wanted:
                raise ExecutorError(
                    f"model {self.spec.name!r}: input {tensor.name!r} is {array.dtype}, the model takes {wanted}"
                )
            args.append(self._tvm.runtime.tensor(np.ascontiguousarray(array), self._device))
        if getattr(_TVM_THREAD_STATE, "threads", None) != self.threads:
            # Mode 1 is TVM's default (all "big" cores); the count caps the workers this thread's pool uses.
            self._configure_threadpool(1, self.threads)
            _TVM_THREAD_STATE.threads = self.threads
        try:
            result = self._main(*args)
        except Exception as exc:
            raise ExecutorError(f"model {self.spec.name!r}: TVM failed: {_one_line(exc)}") from None
        values = [result] if isinstance(result, self._tvm.runtime.Tensor) else list(result)
        all_names = [t.name for t in self.spec.outputs]
        if len(values) != len(all_names):
            raise ExecutorError(
                f"model {self.spec.name!r}: the TVM library returned {len(values)} outputs, "
                f"the config lists {len(all_names)}"
            )
        by_name = dict(zip(all_names, values, strict=True))
        return {n: by_name[n].numpy() for n in names}

    def close(self) -> None:
        self._main = None
        self._vm = None


# Which thread count the calling OS thread's TVM thread pool was last configured for.
_TVM_THREAD_STATE = threading.local()


def _tvm_process_settings(threads: int) -> None:
    """Environment TVM's runtime reads when a thread first needs its pool (so before the first run).

    - ``TVM_NUM_THREADS``: the most workers any pool may have, process-wide; raised to ``threads`` when
      lower. Unset, TVM takes half the logical CPUs (it assumes hyper-threading), one on a 2-vCPU machine.
    - ``TVM_BIND_THREADS=0``: otherwise TVM pins the thread that calls it, and its workers, to fixed
      cores counted from core 0, so every squishy slot running a TVM model would land on the same cores.
    - ``TVM_THREAD_POOL_SPIN_COUNT=0``: idle workers sleep instead of busy-waiting, for the reason
      ``DEFAULT_ALLOW_SPINNING`` gives for ONNX Runtime (spinners take the cores other slots need).
    A user's own ``TVM_BIND_THREADS`` or spin count is left as set. A thread's pool gets its workers when
    that thread first runs TVM, so a later, larger ``threads`` in the same OS thread is capped at them.
    """
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    current = os.environ.get("TVM_NUM_THREADS", "")
    if not current.isdigit() or int(current) < threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)


class NullExecutor(Executor):
    """Does no work: sleeps the profiled ℓ(batch) and returns zero tensors of the spec's outputs.

    For scheduling tests and for measuring the serving stack's own overhead. Output dims marked -1 become
    1. With no profile (or a profile of zeros) it returns at once. A batch larger than the profile's
    largest allowed size is an error, as it would be for a real backend planned with that profile.
    """

    def __init__(self, spec: ModelSpec, profile: Profile | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.spec = spec
        self.profile = profile
        self.clock = clock
        self.batches_run = 0

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        start_ms = self.clock.now_ms()
        names = self._outputs_wanted(output_names)
        batch = self._batch_size(inputs)
        latency_ms = self._latency_ms(batch)
        outputs = {}
        for tensor in self.spec.outputs:
            if tensor.name not in names:
                continue
            dims = tuple(1 if d < 0 else d for d in tensor.dims)
            shape = (batch, *dims) if self.spec.max_batch_size > 0 else dims
            dtype = DATATYPES.get(tensor.datatype, np.dtype(np.float32))
            outputs[tensor.name] = (
                np.full(shape, b"", dtype=object) if tensor.datatype == "BYTES" else np.zeros(shape, dtype)
            )
        self.batches_run += 1
        # Sleep in slices so the total lands close to ℓ(b) even when one sleep overshoots.
        deadline_ms = start_ms + latency_ms
        while (remaining_ms := deadline_ms - self.clock.now_ms()) > 0:
            self.clock.sleep_ms(remaining_ms)
        return outputs

    def _batch_size(self, inputs: Mapping[str, np.ndarray]) -> int:
        if self.spec.max_batch_size <= 0:
            return 1
        first = next(iter(inputs.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim > 0 else 1

    def latency_ms(self, batch: int) -> float:
        """ℓ(batch) this executor takes (0 with no profile)."""
        return self._latency_ms(batch)

    def _latency_ms(self, batch: int) -> float:
        if self.profile is None:
            return 0.0
        fitting = self.profile.smallest_allowed_at_least(batch)
        if fitting is None:
            raise ExecutorError(
                f"model {self.spec.name!r}: batch of {batch} exceeds the profile's largest batch "
                f"{self.profile.max_batch}"
            )
        return self.profile.latency_ms(fitting)


def make_executor(
    spec: ModelSpec,
    kind: str = "auto",
    threads: int = 1,
    profile: Profile | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Executor:
    """An executor for one model version.

    ``kind``: ``auto`` (by the spec's platform: ONNX Runtime for ``onnxruntime_onnx``, Torch for
    ``pytorch_libtorch``, TVM for ``tvm_relax``), ``onnxruntime``, ``torch``, ``tvm`` or ``null`` (sleeps
    ``profile``'s ℓ(b)). ``threads``: intra-op threads (ignored by ``null``). Raises ExecutorError with a
    one-line reason.
    """
    if kind not in EXECUTOR_KINDS:
        raise ExecutorError(f"unknown executor kind {kind!r} (choose from {', '.join(EXECUTOR_KINDS)})")
    if kind == "null":
        return NullExecutor(spec, profile, clock)
    if kind == "auto":
        kind = next((k for k, platform in KIND_PLATFORMS.items() if platform == spec.platform), "")
        if not kind:
            raise ExecutorError(f"model {spec.name!r}: no executor for platform {spec.platform!r}")
    if spec.platform != KIND_PLATFORMS[kind]:
        what = {"onnxruntime": "ONNX Runtime", "torch": "the Torch executor", "tvm": "the TVM executor"}[kind]
        raise ExecutorError(f"model {spec.name!r}: {what} cannot run platform {spec.platform!r}")
    if kind == "onnxruntime":
        return OnnxRuntimeExecutor(spec, threads)
    if kind == "tvm":
        return TvmExecutor(spec, threads)
    return TorchExecutor(spec, threads)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

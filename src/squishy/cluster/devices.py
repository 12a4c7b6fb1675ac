"""Which device a model runs on: Triton's ``instance_group``, checked against what this machine has.

A slot is a CPU slot (a worker with its own threads) or a GPU. A config asks for devices the way Triton
configs do: ``instance_group [ { kind: KIND_GPU gpus: [ 0 ] count: 2 } ]``. ``KIND_CPU`` (and a config
without an ``instance_group``) runs on the CPU; ``KIND_AUTO`` takes GPU 0 when ONNX Runtime here has a
CUDA provider, else the CPU, as Triton does. A config that asks for a GPU this machine cannot run is an
error with the reason (the model is unavailable), never a silent fall back to the CPU: its SLO and its
profile were meant for the GPU.

ONNX Runtime runs a GPU model with its TensorRT provider where installed, then CUDA; the CPU provider
stays last in the list only for the nodes a GPU provider does not implement (ONNX Runtime's own per-node
assignment). PyTorch runs it on ``cuda:<index>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
# model_config.proto's ModelInstanceGroup.Kind
KIND_AUTO, KIND_GPU, KIND_CPU, KIND_MODEL = 0, 1, 2, 3


class DeviceError(ValueError):
    """A config asks for a device this machine cannot run; the message says which and what to do."""


@dataclass(frozen=True)
class Device:
    kind: str = "cpu"  # "cpu" or "gpu"
    index: int = 0  # the GPU's index (CUDA device id)
    count: int = 1  # instances of the model on it (Triton's ``count``)

    @property
    def label(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu{self.index}"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"


CPU = Device()


def requested_devices(config: Any, available_providers: Sequence[str] | None = None) -> tuple[Device, ...]:
    """The devices a Triton ``ModelConfig``'s ``instance_group`` asks for (the CPU when it has none)."""
    groups = list(getattr(config, "instance_group", ()) or ())
    if not groups:
        return (CPU,)
    devices: list[Device] = []
    for group in groups:
        count = int(group.count) or 1
        kind = int(group.kind)
        if kind == KIND_AUTO:
            providers = _providers() if available_providers is None else available_providers
            kind = KIND_GPU if CUDA_PROVIDER in providers else KIND_CPU
        if kind == KIND_GPU:
            devices.extend(Device("gpu", int(g), count) for g in (list(group.gpus) or [0]))
        else:  # KIND_CPU, KIND_MODEL (the model places itself: its own code decides, on the CPU here)
            devices.append(Device("cpu", 0, count))
    return tuple(devices)


def onnxruntime_providers(device: Device, available: Sequence[str] | None = None) -> list[Any]:
    """The ``providers`` list for an ONNX Runtime session on ``device``. Raises DeviceError."""
    if not device.is_gpu:
        return [CPU_PROVIDER]
    available = list(_providers() if available is None else available)
    if CUDA_PROVIDER not in available:
        raise DeviceError(
            f"instance_group asks for GPU {device.index} (KIND_GPU), but ONNX Runtime here has no CUDA provider "
            f"(it has {', '.join(available) or 'none'}): install onnxruntime-gpu on a machine with an NVIDIA "
            "GPU, or ask for KIND_CPU"
        )
    options = {"device_id": device.index}
    providers: list[Any] = [(TENSORRT_PROVIDER, dict(options))] if TENSORRT_PROVIDER in available else []
    return [*providers, (CUDA_PROVIDER, dict(options)), CPU_PROVIDER]


def torch_device(device: Device, cuda_devices: int | None = None) -> str:
    """The PyTorch device for ``device`` (``cpu`` or ``cuda:<index>``). Raises DeviceError."""
    if not device.is_gpu:
        return "cpu"
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.index >= cuda_devices:
        raise DeviceError(
            f"instance_group asks for GPU {device.index} (KIND_GPU), but PyTorch here sees "
            f"{cuda_devices} CUDA device(s): run it on a machine with that GPU, or ask for KIND_CPU"
        )
    return f"cuda:{device.index}"


def check_devices(devices: Sequence[Device], platform: str) -> None:
    """Raise DeviceError when this machine cannot run ``platform`` on every device asked for."""
    for device in devices:
        if not device.is_gpu:
            continue
        if platform == "onnxruntime_onnx":
            onnxruntime_providers(device)
        elif platform == "pytorch_libtorch":
            torch_device(device)
        else:
            raise DeviceError(
                f"instance_group asks for GPU {device.index}, but squishy runs {platform} on the CPU only"
            )


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())

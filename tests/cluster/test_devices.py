"""Devices: what a Triton instance_group asks for, and a clear error when this machine cannot run it.

This machine has no GPU, so a GPU model must be refused with the reason (never run on the CPU instead),
while the provider lists a GPU machine would use are checked as data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from squishy.cluster.devices import (
    CPU,
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    Device,
    DeviceError,
    onnxruntime_providers,
    requested_devices,
    torch_device,
)
from squishy.profiles.profiler import cache_path, device_label
from squishy.runtime.executors import ExecutorError, make_executor
from squishy.runtime.repository import ModelRepository
from tests.runtime.onnx_models import add_model

CONFIG = """
name: "lin"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "x" data_type: TYPE_FP32 dims: [4] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [2] }}
{groups}
"""


def config(*groups: dict) -> model_config_pb2.ModelConfig:
    out = model_config_pb2.ModelConfig()
    for group in groups:
        out.instance_group.add(**group)
    return out


def test_an_instance_group_names_the_devices_and_the_cpu_is_the_default():
    assert requested_devices(config()) == (CPU,)
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert requested_devices(config({"kind": gpu, "gpus": [1, 2], "count": 2})) == (
        Device("gpu", 1, 2),
        Device("gpu", 2, 2),
    )
    assert requested_devices(config({"kind": gpu})) == (Device("gpu", 0, 1),)
    assert requested_devices(config({"kind": cpu, "count": 3})) == (Device("cpu", 0, 3),)
    auto = config({"kind": model_config_pb2.ModelInstanceGroup.KIND_AUTO})
    assert requested_devices(auto, [CUDA_PROVIDER, CPU_PROVIDER]) == (Device("gpu", 0, 1),)
    assert requested_devices(auto, [CPU_PROVIDER]) == (CPU,)


def test_a_gpu_runs_on_tensorrt_or_cuda_with_its_device_id():
    assert onnxruntime_providers(CPU, [CUDA_PROVIDER, CPU_PROVIDER]) == [CPU_PROVIDER]
    gpu1 = Device("gpu", 1)
    assert onnxruntime_providers(gpu1, [CUDA_PROVIDER, CPU_PROVIDER]) == [
        (CUDA_PROVIDER, {"device_id": 1}),
        CPU_PROVIDER,
    ]
    assert onnxruntime_providers(gpu1, [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER])[0] == (
        TENSORRT_PROVIDER,
        {"device_id": 1},
    )
    assert torch_device(gpu1, cuda_devices=2) == "cuda:1" and torch_device(CPU, cuda_devices=0) == "cpu"


def test_a_gpu_this_machine_lacks_is_a_clear_error_not_a_fall_back():
    with pytest.raises(DeviceError, match=r"GPU 0 .*no CUDA provider \(it has CPUExecutionProvider\).*KIND_CPU"):
        onnxruntime_providers(Device("gpu", 0), [CPU_PROVIDER])
    with pytest.raises(DeviceError, match=r"GPU 3 .*PyTorch here sees 2 CUDA device"):
        torch_device(Device("gpu", 3), cuda_devices=2)


def test_a_model_asking_for_a_gpu_here_is_unavailable_with_the_reason(tmp_path: Path):
    add_model(tmp_path, "lin", config=CONFIG.format(groups="instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]"))
    add_model(tmp_path, "lin-cpu", config=CONFIG.format(groups="instance_group [ { kind: KIND_CPU count: 2 } ]"))
    (tmp_path / "lin-cpu" / "config.pbtxt").write_text(
        (tmp_path / "lin-cpu" / "config.pbtxt").read_text().replace('name: "lin"', 'name: "lin-cpu"')
    )
    repository = ModelRepository(tmp_path)
    index = {state.name: state for state in repository.load_all()}
    assert index["lin"].state == "UNAVAILABLE"
    assert "KIND_GPU" in index["lin"].reason and "no CUDA provider" in index["lin"].reason
    assert index["lin-cpu"].state == "READY"
    spec = repository.spec("lin-cpu")
    assert spec.device == Device("cpu", 0, 2)
    # An executor asked for a GPU here refuses too (a spec made by hand, not through the repository).
    with pytest.raises(ExecutorError, match="no CUDA provider"):
        make_executor(replace(spec, device=Device("gpu", 0)), "onnxruntime")


def test_profiles_name_the_device_they_were_measured_on():
    assert device_label(2) == "cpu-2t" and device_label(1, 2) == "cpu-1tx2"
    assert device_label(1, 2, Device("gpu", 1)) == "gpu1x2"
    model = Path("/repo/m/1/model.onnx")
    assert cache_path(model, 1) == Path("/repo/m/1/cpu-1t.profile-cache.json")
    assert cache_path(model, 1, 2, Device("gpu", 1)) == Path("/repo/m/1/gpu1x2.profile-cache.json")

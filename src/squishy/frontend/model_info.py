"""What the server says about its models: metadata, Triton ModelConfig, statistics, repository index.

Each answer is built once as the protobuf message the gRPC API returns; the REST API renders the same
message as JSON with Triton's field names and 64-bit integers as JSON numbers (protobuf's JSON mapping
would quote them, and perf_analyzer and tritonclient read them as numbers), so both APIs agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2, service_pb2

from squishy.runtime.api import ModelSpec, ModelState, ModelStatistics, TensorSpec

SERVER_NAME = "squishy"
# What this server implements of Triton's extensions (server metadata lists exactly these).
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "parameters",
    "schedule_policy",
    "statistics",
)

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def message_to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton renders it in JSON: proto field names, defaults shown, int64 as numbers."""
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _unquote_int64(message.DESCRIPTOR, doc)
    return doc


def _unquote_int64(descriptor: Descriptor, doc: dict[str, Any]) -> None:
    for name, value in doc.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                value_field = entry.fields_by_name["value"]
                for key, item in value.items():
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        _unquote_int64(value_field.message_type, item)
                    elif value_field.type in _INT64_TYPES:
                        value[key] = int(item)
            elif isinstance(value, list):
                for item in value:
                    _unquote_int64(entry, item)
            elif isinstance(value, dict):
                _unquote_int64(entry, value)
        elif field.type in _INT64_TYPES:
            doc[name] = [int(v) for v in value] if isinstance(value, list) else int(value)


# ------------------------------------------------------------------------------------ metadata


def wire_shape(spec: ModelSpec, tensor: TensorSpec) -> list[int]:
    """The shape clients see: -1 for variable dims, and a leading -1 batch dim when the model batches."""
    return ([-1] if spec.max_batch_size > 0 else []) + list(tensor.dims)


def model_metadata(spec: ModelSpec, versions: Iterable[str]) -> service_pb2.ModelMetadataResponse:
    message = service_pb2.ModelMetadataResponse(name=spec.name, versions=list(versions), platform=spec.platform)
    for tensor in spec.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=wire_shape(spec, tensor))
    for tensor in spec.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=wire_shape(spec, tensor))
    return message


def model_metadata_json(spec: ModelSpec, versions: Iterable[str]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "versions": list(versions),
        "platform": spec.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": wire_shape(spec, t)} for t in spec.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": wire_shape(spec, t)} for t in spec.outputs],
    }


def versions_of(name: str, index: Iterable[ModelState], spec: ModelSpec) -> list[str]:
    """Versions of a model listed in the repository index (at least the spec's own)."""
    versions = sorted({s.version for s in index if s.name == name and s.version}, key=_version_key)
    return versions or [spec.version]


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


# -------------------------------------------------------------------------------------- config

_CONFIG_TYPES = {
    "BOOL": model_config_pb2.TYPE_BOOL,
    "UINT8": model_config_pb2.TYPE_UINT8,
    "UINT16": model_config_pb2.TYPE_UINT16,
    "UINT32": model_config_pb2.TYPE_UINT32,
    "UINT64": model_config_pb2.TYPE_UINT64,
    "INT8": model_config_pb2.TYPE_INT8,
    "INT16": model_config_pb2.TYPE_INT16,
    "INT32": model_config_pb2.TYPE_INT32,
    "INT64": model_config_pb2.TYPE_INT64,
    "FP16": model_config_pb2.TYPE_FP16,
    "FP32": model_config_pb2.TYPE_FP32,
    "FP64": model_config_pb2.TYPE_FP64,
    "BYTES": model_config_pb2.TYPE_STRING,
}


def model_config(spec: ModelSpec) -> model_config_pb2.ModelConfig:
    """The model's Triton ModelConfig: the repository's own when it has one, else one built from the spec."""
    if isinstance(spec.config, model_config_pb2.ModelConfig):
        return spec.config
    config = model_config_pb2.ModelConfig(name=spec.name, platform=spec.platform, max_batch_size=spec.max_batch_size)
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=_CONFIG_TYPES[tensor.datatype], dims=list(tensor.dims))
    for tensor in spec.outputs:
        config.output.add(name=tensor.name, data_type=_CONFIG_TYPES[tensor.datatype], dims=list(tensor.dims))
    if spec.max_batch_size > 0:
        # squishy batches every batching model (by its plan); perf_analyzer reads this to pick batch sizes.
        config.dynamic_batching.SetInParent()
    config.parameters["slo_ms"].string_value = f"{spec.slo_ms:g}"
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = str(value)
    return config


# ---------------------------------------------------------------------------------- statistics


def statistics(stats: Iterable[ModelStatistics]) -> service_pb2.ModelStatisticsResponse:
    message = service_pb2.ModelStatisticsResponse()
    for s in stats:
        entry = message.model_stats.add(
            name=s.name,
            version=s.version,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        infer = entry.inference_stats
        _duration(infer.success, s.success_count, s.success_ns)
        _duration(infer.fail, s.fail_count, s.fail_ns)
        _duration(infer.queue, s.queue_count, s.queue_ns)
        # The contract keeps one count for the three compute phases, as every executed request has all three.
        _duration(infer.compute_input, s.compute_infer_count, s.compute_input_ns)
        _duration(infer.compute_infer, s.compute_infer_count, s.compute_infer_ns)
        _duration(infer.compute_output, s.compute_infer_count, s.compute_output_ns)
        _duration(infer.cache_hit, 0, 0)
        _duration(infer.cache_miss, 0, 0)
        for batch_size, (executions, compute_ns) in sorted(s.batch_stats.items()):
            batch = entry.batch_stats.add(batch_size=batch_size)
            _duration(batch.compute_input, executions, 0)
            _duration(batch.compute_infer, executions, compute_ns)
            _duration(batch.compute_output, executions, 0)
    return message


def _duration(field: service_pb2.StatisticDuration, count: int, ns: int) -> None:
    field.count = count
    field.ns = ns
    field.SetInParent()


# ---------------------------------------------------------------------------------- repository


def repository_index(states: Iterable[ModelState]) -> service_pb2.RepositoryIndexResponse:
    message = service_pb2.RepositoryIndexResponse()
    for state in states:
        message.models.add(name=state.name, version=state.version, state=state.state, reason=state.reason)
    return message


def repository_index_json(states: Iterable[ModelState]) -> list[dict[str, str]]:
    out = []
    for state in states:
        entry = {"name": state.name, "version": state.version, "state": state.state}
        if state.reason:
            entry["reason"] = state.reason
        out.append(entry)
    return out

"""Requests built from metadata: shapes (batch dimension, variable dimensions), datatypes, wire encodings."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2

from squishy.bench import BenchConfig, BenchError, InputSpec, ModelLoad
from squishy.bench.config import parse_http_url, parse_input_arg, parse_model_arg, parse_parameter_arg
from squishy.bench.metadata import ModelMeta, TensorMeta
from squishy.bench.payload import grpc_request, http_json_request, http_request, input_shapes, random_tensor
from squishy.frontend.codec import parse_infer_request
from squishy.runtime.api import ModelSpec, TensorSpec

IMAGE = ModelMeta(
    "net", (TensorMeta("image", "FP32", (-1, 3, 8, 8)), TensorMeta("ids", "INT64", (-1, -1))), max_batch_size=8
)


def test_the_batch_dimension_takes_the_batch_size_and_variable_dims_need_an_input() -> None:
    load = ModelLoad("net", rate_per_s=1, slo_ms=10, batch_size=2)
    with pytest.raises(BenchError, match=r"input 'ids' has a variable shape \[-1, -1\].*--input ids=2,1:INT64"):
        input_shapes(IMAGE, load)
    specs = input_shapes(IMAGE, load, [InputSpec("ids", (2, 16))])
    assert specs == [InputSpec("image", (2, 3, 8, 8), "FP32"), InputSpec("ids", (2, 16), "INT64")]


def test_without_a_model_config_a_leading_minus_one_is_the_batch() -> None:
    meta = ModelMeta("net", (TensorMeta("x", "FP16", (-1, 4)),), max_batch_size=None)
    assert input_shapes(meta, ModelLoad("net", 1, 10)) == [InputSpec("x", (1, 4), "FP16")]
    unbatched = ModelMeta("net", (TensorMeta("x", "FP16", (-1, 4)),), max_batch_size=0)
    with pytest.raises(BenchError, match="variable shape"):
        input_shapes(unbatched, ModelLoad("net", 1, 10))


def test_an_input_the_model_lacks_is_named() -> None:
    with pytest.raises(BenchError, match="has no input 'nope'"):
        input_shapes(IMAGE, ModelLoad("net", 1, 10, inputs=(InputSpec("nope", (1,)),)))


@pytest.mark.parametrize(
    ("datatype", "element_bytes"),
    [
        ("BOOL", 1),
        ("UINT8", 1),
        ("INT16", 2),
        ("INT32", 4),
        ("INT64", 8),
        ("FP16", 2),
        ("FP32", 4),
        ("FP64", 8),
        ("BF16", 2),
    ],
)
def test_random_tensors_have_the_size_of_their_datatype(datatype: str, element_bytes: int) -> None:
    tensor = random_tensor(InputSpec("x", (2, 3), datatype), np.random.default_rng(0))
    assert len(tensor.data) == 6 * element_bytes


def test_bytes_tensors_carry_a_length_prefix_per_element() -> None:
    tensor = random_tensor(InputSpec("text", (3,), "BYTES"), np.random.default_rng(0))
    assert len(tensor.data) == 3 * (4 + 8)
    assert int.from_bytes(tensor.data[:4], "little") == 8


def test_the_http_request_is_one_binary_infer_the_server_codec_accepts() -> None:
    address = parse_http_url("http://127.0.0.1:8000/prefix")
    load = ModelLoad("affine", 1, 10, parameters={"delay_ms": 5})
    tensor = random_tensor(InputSpec("x", (1, 4), "FP32"), np.random.default_rng(0))
    raw = http_request(address, load, [tensor])
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /prefix/v2/models/affine/infer HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    header_length = int(headers["Inference-Header-Content-Length"])
    assert orjson.loads(body[:header_length])["parameters"] == {"delay_ms": 5, "binary_data_output": True}
    spec = ModelSpec(
        name="affine",
        version="1",
        platform="onnxruntime_onnx",
        max_batch_size=8,
        inputs=(TensorSpec("x", "FP32", (4,)),),
        outputs=(TensorSpec("y", "FP32", (4,)),),
        slo_ms=10.0,
    )
    request, _ = parse_infer_request(body, header_length, spec, "affine", None, 0.0)
    assert np.array_equal(request.inputs["x"], np.frombuffer(tensor.data, "<f4").reshape(1, 4))
    assert request.parameters["delay_ms"] == 5


def test_the_json_request_carries_tensors_as_lists_the_server_codec_accepts() -> None:
    address = parse_http_url("http://127.0.0.1:8000")
    load = ModelLoad("affine", 1, 10, parameters={"priority": 1}, encoding="json")
    tensor = random_tensor(InputSpec("x", (1, 4), "FP32"), np.random.default_rng(0))
    raw = http_json_request(address, load, [tensor])
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) == len(body)
    assert "Inference-Header-Content-Length" not in headers
    spec = ModelSpec("affine", "1", "onnxruntime_onnx", 8, (TensorSpec("x", "FP32", (4,)),), (), 10.0)
    request, _ = parse_infer_request(body, None, spec, "affine", None, 0.0)
    assert np.array_equal(request.inputs["x"], np.frombuffer(tensor.data, "<f4").reshape(1, 4))
    assert request.priority == 1
    with pytest.raises(BenchError, match="encoding must be one of binary, json"):
        ModelLoad("affine", 1, 10, encoding="msgpack")


def test_the_grpc_request_carries_raw_contents_and_typed_parameters() -> None:
    load = ModelLoad("affine", 1, 10, version="1", parameters={"flag": True, "delay_ms": 5, "w": 0.5, "s": "x"})
    tensor = random_tensor(InputSpec("x", (1, 4), "FP32"), np.random.default_rng(0))
    request = service_pb2.ModelInferRequest.FromString(grpc_request(load, [tensor]))
    assert (request.model_name, request.model_version) == ("affine", "1")
    assert list(request.inputs[0].shape) == [1, 4] and request.raw_input_contents[0] == tensor.data
    params = request.parameters
    assert params["flag"].bool_param is True and params["delay_ms"].int64_param == 5
    assert params["w"].double_param == 0.5 and params["s"].string_param == "x"


def test_cli_forms_parse() -> None:
    assert parse_model_arg("resnet") == ("resnet", None, None)
    assert parse_model_arg("resnet:40:100") == ("resnet", 40.0, 100.0)
    assert parse_input_arg("x=1,3,224,224:fp32") == (None, InputSpec("x", (1, 3, 224, 224), "FP32"))
    assert parse_input_arg("bert/ids=1x128") == ("bert", InputSpec("ids", (1, 128), None))
    assert parse_parameter_arg("timeout=50000") == ("timeout", 50000)
    assert parse_parameter_arg("flag=true") == ("flag", True)
    assert parse_parameter_arg("tag=a=b") == ("tag", "a=b")
    assert parse_http_url("localhost:9000").port == 9000
    for bad in ("resnet:fast", "x", "x=1,a"):
        with pytest.raises(BenchError):
            parse_input_arg(bad) if "=" in bad or bad == "x" else parse_model_arg(bad)


def test_configs_reject_nonsense() -> None:
    with pytest.raises(BenchError, match="rate"):
        ModelLoad("m", rate_per_s=0, slo_ms=10)
    with pytest.raises(BenchError, match="twice"):
        BenchConfig(models=(ModelLoad("m", 1, 10), ModelLoad("m", 2, 10)))
    with pytest.raises(BenchError, match="scheme"):
        BenchConfig(models=(ModelLoad("m", 1, 10),), url="https://example.com")
    config = BenchConfig(models=(ModelLoad("a", 30, 10), ModelLoad("b", 10, 10)))
    assert [m.rate_per_s for m in config.with_total_rate(80).models] == [60, 20]

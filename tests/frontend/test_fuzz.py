"""Hypothesis fuzzing of the REST front end against a real server on loopback.

Valid-ish and malformed infer bodies (JSON and the binary tensor extension), garbage bytes, unknown
models/versions/paths and wrong methods. Whatever arrives, the server must answer with a status that is
not 500, every non-2xx body must be ``{"error": "<non-empty string>"}`` (the model-readiness and health
probes, whose 4xx/503 bodies carry the answer itself, are the documented exceptions), and it must go on
serving valid requests. The OpenAPI document the server ships is checked against the routes as well.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from squishy.frontend.http import openapi_document
from tests.frontend.fuzzing import DATATYPES, FUZZ, RESERVED_PARAMS

CASES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module")
def client(http_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_url, timeout=10.0) as http:
        yield http


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print(f"\nREST fuzz cases: {dict(CASES)} total={sum(CASES.values())}")


def check_answer(response: httpx.Response, probe: bool = False) -> None:
    """No 500; every other non-2xx answer is ``{"error": "<non-empty>"}`` (a probe may answer its verdict)."""
    assert response.status_code != 500, response.text
    assert response.status_code < 600
    if response.status_code < 300:
        return
    doc = orjson.loads(response.content)  # raises if not JSON
    if probe and set(doc) & {"ready", "live"}:
        return
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    assert isinstance(doc["error"], str) and doc["error"].strip(), doc


def assert_still_serving(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    response = client.post("/v2/models/affine/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["y"] == [3, 5, 7, 9]


# --------------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["x", "text", "y", "neg", "echo", "", "X", "x\x00", "é"]) | st.text(max_size=6)
datatypes = st.sampled_from(DATATYPES) | st.sampled_from(["fp32", "FLOAT", "", "INT128"]) | st.text(max_size=5)
dims = st.integers(-3, 9) | st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63)])
shapes = (
    st.lists(dims, max_size=5)
    | st.lists(st.integers(0, 5), min_size=1, max_size=3)
    | st.sampled_from([[1, 4], [2, 4], [0, 4], [3], [1], []])
    | json_values
)
data_values = (
    st.lists(st.floats(allow_nan=True) | st.integers(-(2**65), 2**65), max_size=24)
    | st.lists(st.text(max_size=4), max_size=6)
    | st.lists(st.booleans(), max_size=8)
    | st.lists(st.lists(st.floats(width=32), max_size=5), max_size=4)
    | json_values
)
param_keys = (
    st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "priority", "timeout", "sequence_id"])
    | st.text(max_size=6)
).filter(lambda k: k not in RESERVED_PARAMS)
parameters = st.dictionaries(param_keys, json_values, max_size=3) | json_values


@st.composite
def infer_input(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)  # not even an object
    item: dict[str, Any] = {}
    fields = {
        "name": names,
        "shape": shapes,
        "datatype": datatypes,
        "data": data_values,
        "parameters": parameters,
    }
    for key, strategy in fields.items():
        if draw(st.integers(0, 9)) > 0:  # each field missing one time in ten
            item[key] = draw(strategy if draw(st.booleans()) else json_values) if key != "name" else draw(strategy)
    return item


@st.composite
def valid_ish_affine(draw: st.DrawFn) -> dict[str, Any]:
    """Close to a valid affine request: the batch, the data length or one field slightly off."""
    n = draw(st.integers(0, 9))
    width = draw(st.sampled_from([4, 4, 4, 3, 5]))
    count = n * width + draw(st.sampled_from([0, 0, 0, -1, 1, 4]))
    data = draw(st.lists(st.floats(width=32, allow_nan=False) | st.integers(-1000, 1000), min_size=max(count, 0),
                         max_size=max(count, 0)))  # fmt: skip
    tensor: dict[str, Any] = {
        "name": "x",
        "shape": [n, width],
        "datatype": draw(st.sampled_from(["FP32"] * 4 + DATATYPES)),
    }
    if draw(st.booleans()):
        tensor["data"] = data
    else:
        tensor["data"] = np.array(data).reshape(n, width).tolist() if count == n * width and n else data
    doc: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["y", "neg", "z"])},
                    optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans()})},
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "binary_data_output": st.booleans() | json_scalars,
                    "priority": st.integers(-2, 2**64) | json_scalars,
                    "timeout": st.integers(-2, 2**64) | json_scalars,
                },
            )
        )
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=8) | json_scalars)
    return doc


@st.composite
def infer_doc(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(json_values)
    if kind <= 4:
        return draw(valid_ish_affine())
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        doc["inputs"] = draw(st.lists(infer_input(), max_size=3) | json_values)
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(st.dictionaries(st.sampled_from(["name", "parameters"]), json_values)) | json_values
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    if draw(st.booleans()):
        doc["id"] = draw(json_values)
    return doc


models = st.sampled_from(["affine", "affine", "echo", "nope", "", "affine%2F1", "a b", "..", "%ZZ", "é"])
versions = st.sampled_from([None, None, "1", "2", "", "0", "-1", "1.0"])


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # json, not orjson: integers beyond 64 bits must reach the server too


def infer_path(model: str, version: str | None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"


# -------------------------------------------------------------------------------------- tests


def test_openapi_document_is_served_and_covers_the_routes(client: httpx.Client) -> None:
    response = client.get("/v2/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc == json.loads(openapi_document())
    assert doc["openapi"].startswith("3.")
    suffixes = ["", "/ready", "/config", "/stats", "/infer"]
    expected = {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats", "/v2/repository/index"}
    expected |= {f"/v2/models/{{model}}{s}" for s in suffixes}
    expected |= {f"/v2/models/{{model}}/versions/{{version}}{s}" for s in suffixes}
    expected |= {"/v2/repository/models/{model}/load", "/v2/repository/models/{model}/unload"}
    assert expected <= set(doc["paths"])
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    body = doc["components"]["requestBodies"][infer["requestBody"]["$ref"].rsplit("/", 1)[1]]
    assert set(body["content"]) == {"application/json", "application/octet-stream"}
    # Every documented path answers something other than 404 on its own method (and JSON on errors).
    concrete = {"{model}": "affine", "{version}": "1"}
    for path, item in doc["paths"].items():
        url = path
        for placeholder, value in concrete.items():
            url = url.replace(placeholder, value)
        for method in ("get", "post"):
            if method in item and not url.endswith("/unload"):
                kwargs = {"json": {"inputs": []}} if url.endswith("/infer") else {}
                answer = client.request(method.upper(), url, **kwargs)
                assert answer.status_code != 404, (method, url, answer.text)
                check_answer(answer, probe=True)


@settings(FUZZ, max_examples=450)
@given(model=models, version=versions, doc=infer_doc(), raw=st.integers(0, 19))
def test_fuzz_json_infer(client: httpx.Client, model: str, version: str | None, doc: Any, raw: int) -> None:
    CASES["json_infer"] += 1
    body = json.dumps(doc, separators=(",", ":") if raw else None).encode()  # NaN/Infinity: not JSON, must be 400
    response = client.post(infer_path(model, version), content=body, headers={"content-type": "application/json"})
    check_answer(response)


@st.composite
def binary_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    n = draw(st.integers(0, 4))
    x = np.arange(n * 4, dtype=np.float32)
    declared = draw(st.sampled_from([x.nbytes, x.nbytes, x.nbytes - 4, x.nbytes + 4, 0, -1, 2**63]) | json_scalars)
    tensor: dict[str, Any] = {"name": draw(st.sampled_from(["x", "x", "text"])), "shape": [n, 4],
                              "datatype": draw(st.sampled_from(["FP32", "FP32", "FP64", "INT8", "BYTES", "BOOL"])),
                              "parameters": {"binary_data_size": declared}}  # fmt: skip
    if draw(st.integers(0, 5)) == 0:
        tensor["data"] = x.tolist()
    doc: dict[str, Any] = {"inputs": [tensor] * draw(st.sampled_from([1, 1, 1, 2, 0]))}
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans())}
    header = dumps(doc)
    tail = x.tobytes()
    tail = draw(st.sampled_from([tail, tail, tail[:-1], tail + b"\x00", b""]) | st.binary(max_size=40))
    length = draw(
        st.sampled_from(
            [str(len(header))] * 4 + ["0", "-1", str(len(header) + len(tail) + 1), "", " ", "1e3", "0x10", "+5", "1_0"]
        )
        | st.integers(-5, len(header) + len(tail) + 5).map(str)
        | st.text(max_size=4).filter(lambda t: t.isprintable() and t.isascii())
    )
    headers = {"content-type": "application/octet-stream"}
    if draw(st.integers(0, 9)):
        headers["inference-header-content-length"] = length.strip()
    return header + tail, headers


@settings(FUZZ, max_examples=250)
@given(request=binary_request(), version=versions)
def test_fuzz_binary_infer(client: httpx.Client, request: tuple[bytes, dict[str, str]], version: str | None) -> None:
    CASES["binary_infer"] += 1
    body, headers = request
    check_answer(client.post(infer_path("affine", version), content=body, headers=headers))


# h11 (the client) refuses header values with surrounding whitespace: strip them.
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8).map(str.strip)


@settings(FUZZ, max_examples=150)
@given(
    model=models,
    body=st.binary(max_size=200) | st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"inputs": [}']),
    encoding=st.none() | st.sampled_from(["gzip", "deflate", "identity", "br", "x-gzip", "GZIP"]) | header_values,
    header_length=st.none() | header_values,
    accept=st.none() | st.sampled_from(["gzip", "deflate;q=0", "*", "gzip;q=x"]) | header_values,
)
def test_fuzz_garbage_infer(
    client: httpx.Client, model: str, body: bytes, encoding: str | None, header_length: str | None, accept: str | None
) -> None:
    CASES["garbage_infer"] += 1
    headers = {"content-type": "application/octet-stream"}
    for key, value in (
        ("content-encoding", encoding),
        ("inference-header-content-length", header_length),
        ("accept-encoding", accept),
    ):
        if value is not None:
            headers[key] = value
    check_answer(client.post(infer_path(model, None), content=body, headers=headers))


path_parts = st.sampled_from(
    ["v2", "models", "affine", "echo", "nope", "versions", "1", "2", "", "ready", "config", "stats", "infer",
     "health", "live", "repository", "index", "openapi.json", "%2F", "%00", "%ZZ", "..", "é"]
)  # fmt: skip


@settings(FUZZ, max_examples=250)
@given(
    parts=st.lists(path_parts, max_size=6),
    prefix=st.booleans(),
    method=st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    body=st.none() | st.binary(max_size=30) | json_values.map(dumps),
)
def test_fuzz_paths_and_methods(
    client: httpx.Client, parts: list[str], prefix: bool, method: str, body: bytes | None
) -> None:
    CASES["paths_methods"] += 1
    path = "/" + "/".join((["v2"] if prefix else []) + parts)
    if "unload" in path:
        return  # never unload the models the other cases need
    assume(not path.startswith("//"))  # httpx reads "//x" as a host, not a path: the server never sees it
    response = client.request(method, path, content=body)
    if method == "HEAD":
        assert response.status_code != 500
        return
    probe = bool({"ready", "live"} & set(parts))
    check_answer(response, probe=probe)


@settings(FUZZ, max_examples=100)
@given(
    model=st.sampled_from(["affine", "echo", "nope", "", "%2F"]),
    action=st.sampled_from(["load", "index"]),
    body=st.none() | json_values.map(dumps) | st.binary(max_size=30),
    doc=st.none()
    | st.fixed_dictionaries({}, optional={"ready": json_values, "parameters": json_values})
    | st.fixed_dictionaries({"parameters": st.dictionaries(st.sampled_from(["config", "file:a", "x"]), json_values)}),
)
def test_fuzz_repository(client: httpx.Client, model: str, action: str, body: bytes | None, doc: Any) -> None:
    CASES["repository"] += 1
    content = dumps(doc) if doc is not None else body
    path = "/v2/repository/index" if action == "index" else f"/v2/repository/models/{model}/load"
    response = client.post(path, content=content)
    check_answer(response)


def test_still_serving_after_fuzzing(client: httpx.Client) -> None:
    assert_still_serving(client)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/affine/ready", "/v2/models/echo/ready"):
        assert client.get(path).status_code == 200

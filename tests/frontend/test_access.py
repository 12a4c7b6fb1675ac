"""Repository control is off unless asked for, and a bearer token guards it when set (REST and gRPC)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from squishy.frontend import ThreadedServer, start_in_thread
from squishy.frontend.access import RepositoryControl

from .conftest import OnnxTestService

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def default_server() -> Iterator[ThreadedServer]:
    with start_in_thread(OnnxTestService(), metrics_port=None) as running:
        yield running


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[ThreadedServer]:
    control = RepositoryControl("explicit", TOKEN)
    with start_in_thread(OnnxTestService(), metrics_port=None, control=control) as running:
        yield running


def test_by_default_load_and_unload_are_refused_and_nothing_changes(default_server: ThreadedServer) -> None:
    http = triton_http.InferenceServerClient(f"127.0.0.1:{default_server.ports.http}")
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{default_server.ports.grpc}")
    with pytest.raises(InferenceServerException) as refused:
        http.unload_model("echo")
    assert refused.value.status() == "403" and "--model-control explicit" in refused.value.message()
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        grpc.load_model("echo")
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        grpc.unload_model("echo", headers={"authorization": f"Bearer {TOKEN}"})
    assert http.is_model_ready("echo") and grpc.is_server_ready()
    # Reading the repository changes nothing and stays open.
    assert {m["name"] for m in http.get_model_repository_index()} == {"affine", "echo"}
    body = httpx.post(f"http://127.0.0.1:{default_server.ports.http}/v2/repository/models/echo/unload").json()
    assert set(body) == {"error"}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", "Bearer", TOKEN])
def test_a_missing_or_wrong_token_is_401_over_rest(guarded_server: ThreadedServer, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    reply = httpx.post(
        f"http://127.0.0.1:{guarded_server.ports.http}/v2/repository/models/echo/unload", headers=headers
    )
    assert reply.status_code == 401 and "token" in reply.json()["error"]
    assert httpx.get(f"http://127.0.0.1:{guarded_server.ports.http}/v2/models/echo/ready").status_code == 200


def test_the_right_token_loads_and_unloads_over_both_protocols(guarded_server: ThreadedServer) -> None:
    http = triton_http.InferenceServerClient(f"127.0.0.1:{guarded_server.ports.http}")
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{guarded_server.ports.grpc}")
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        grpc.unload_model("echo", headers={"authorization": "Bearer nope"})
    assert grpc.is_model_ready("echo")
    http.unload_model("echo", headers={"Authorization": f"Bearer {TOKEN}"})
    assert not http.is_model_ready("echo")
    grpc.load_model("echo", headers={"authorization": f"Bearer {TOKEN}"})
    assert http.is_model_ready("echo")


def test_a_token_needs_explicit_control_and_may_not_be_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        RepositoryControl("explicit", "")
    with pytest.raises(ValueError, match="model control"):
        RepositoryControl("poll")  # type: ignore[arg-type]

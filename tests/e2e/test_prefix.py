"""Prefix batching on a real ``squishy serve``: the game-like example's three classifiers share one trunk.

Served with ``tritonclient`` unchanged, over HTTP and gRPC: the plan runs the three models as one prefix
group, every answer equals what the whole model computes alone, the trained heads recognize held-out
digits, ``--no-prefix-batching`` serves each model on its own with the same answers, and a model whose
``prefix_tensor`` cannot end a trunk is unavailable with the reason.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_digits

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples
from squishy.examples.game import EXAMPLE_TASKS, TASKS, digit_images, model_name

pytestmark = pytest.mark.e2e

GAME = tuple(model_name("game", task) for task in EXAMPLE_TASKS)
SAMPLES = 24


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("game") / "repository"
    build_examples(root, only=GAME)
    # A copy of one model whose prefix_tensor names nothing in its graph.
    shutil.copytree(root / "game-digit", root / "misnamed")
    config = (root / "misnamed" / "config.pbtxt").read_text()
    config = config.replace('name: "game-digit"', 'name: "misnamed"').replace('"features"', '"no_such_tensor"')
    (root / "misnamed" / "config.pbtxt").write_text(config)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    with start_squishy(repository, ["--no-strict-readiness"]) as running:
        yield running


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    rows = np.random.default_rng(5).choice(len(data.target), SAMPLES, replace=False)
    return digit_images(data.data[rows]), data.target[rows]


def answers(url: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every image to every game model at once (async requests, so they batch together)."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"), concurrency=16)
    pending = {}
    for name in GAME:
        for index in range(len(images)):
            tensor = httpclient.InferInput("image", [1, *images.shape[1:]], "FP32")
            tensor.set_data_from_numpy(images[index : index + 1])
            pending[name, index] = client.async_infer(name, [tensor])
    out: dict[str, list[np.ndarray]] = {name: [] for name in GAME}
    for (name, _), handle in pending.items():
        out[name].append(handle.get_result().as_numpy("probabilities")[0])
    client.close()
    return {name: np.stack(rows) for name, rows in out.items()}


def direct(repository: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """What each whole model computes, run by ONNX Runtime alone."""
    out = {}
    for name in GAME:
        session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        out[name] = session.run(None, {"image": images})[0]
    return out


def test_the_three_models_run_as_one_prefix_group(server: ServerProcess, repository: Path) -> None:
    # The trunk's and the head's profiles are cached beside the model's, each under its own name.
    version = repository / "game-digit" / "1"
    assert list(version.glob("prefix-features/trunk.cpu-*.profile-cache.json"))
    assert list(version.glob("prefix-features/head.cpu-*.profile-cache.json"))
    assert list(version.glob("cpu-*.profile-cache.json"))
    metrics = httpx.get(server.metrics_url, timeout=10).text
    grouped = re.findall(r'squishy_plan_prefix_group\{model="([^"]+)",prefix="(trunk-[0-9a-f]+)"', metrics)
    assert sorted(model for model, _ in grouped) == sorted(GAME), metrics
    assert len({trunk for _, trunk in grouped}) == 1


def test_every_answer_is_the_whole_models_and_the_heads_recognize_digits(
    server: ServerProcess, repository: Path
) -> None:
    images, labels = digits()
    served = answers(server.http_url, images)
    expected = direct(repository, images)
    for task, name in zip(EXAMPLE_TASKS, GAME, strict=True):
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-4, atol=1e-5)
        _, label = TASKS[task]
        truth = np.array([label(int(d)) for d in labels])
        assert (served[name].argmax(axis=1) == truth).mean() >= 0.85, name
    statistics = httpx.get(f"{server.http_url}/v2/models/game-parity/stats", timeout=10).json()["model_stats"][0]
    assert int(statistics["inference_stats"]["success"]["count"]) >= SAMPLES


def test_grpc_clients_get_the_same_answers(server: ServerProcess, repository: Path) -> None:
    images, _ = digits()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("image", [4, *images.shape[1:]], "FP32")
    tensor.set_data_from_numpy(images[:4])
    result = client.infer("game-large", [tensor]).as_numpy("probabilities")
    np.testing.assert_allclose(result, direct(repository, images[:4])["game-large"], rtol=1e-4, atol=1e-5)


def test_a_prefix_tensor_that_names_nothing_makes_the_model_unavailable(server: ServerProcess) -> None:
    index = {m["name"]: m for m in httpx.post(f"{server.http_url}/v2/repository/index", json={}).json()}
    assert index["misnamed"]["state"] == "UNAVAILABLE"
    assert "prefix_tensor='no_such_tensor'" in index["misnamed"]["reason"]
    assert all(index[name]["state"] == "READY" for name in GAME)


def test_without_prefix_batching_each_model_serves_alone_with_the_same_answers(repository: Path) -> None:
    images, _ = digits()
    with start_squishy(repository, ["--no-strict-readiness", "--no-prefix-batching"]) as alone:
        metrics = httpx.get(alone.metrics_url, timeout=10).text
        assert "squishy_plan_prefix_group{" not in metrics
        planned = set(re.findall(r'squishy_plan_rate\{model="([^"]+)"', metrics))
        assert planned == {*GAME, "misnamed"}
        served = answers(alone.http_url, images)
    expected = direct(repository, images)
    for name in GAME:
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-4, atol=1e-5)

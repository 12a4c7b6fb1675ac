"""Fixtures that build the example repository and start ``squishy serve`` as a real subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples

# The example models these tests serve: a real classifier and two CNNs of very different cost.
MODELS = ("digits", "smallcnn", "resnet18-half")

Server = ServerProcess
# The shared server allows repository control, guarded by this token (tests/e2e/test_serve.py uses it).
CONTROL_TOKEN = "e2e-control-token"


@pytest.fixture(scope="session")
def example_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    build_examples(root, only=MODELS)
    return root


def start_server(repository: Path, *extra: str) -> ServerProcess:
    return start_squishy(repository, extra)


def stop_server(server: ServerProcess) -> None:
    server.stop()


@pytest.fixture(scope="session")
def server(example_repository: Path) -> Iterator[ServerProcess]:
    with start_squishy(
        example_repository, ["--model-control", "explicit", "--control-token", CONTROL_TOKEN]
    ) as running:
        yield running

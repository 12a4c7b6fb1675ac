"""The model repository: Triton layout, configs (pbtxt and YAML), ONNX auto-complete, versions, control."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from onnx import TensorProto

from squishy.runtime.api import InvalidRequestError, ModelNotFoundError, ModelNotReadyError
from squishy.runtime.repository import (
    DEFAULT_MAX_BATCH_SIZE,
    READY,
    UNAVAILABLE,
    ModelLoadError,
    ModelRepository,
    profile_batches,
)
from tests.runtime.onnx_models import add_model, linear_model

PBTXT = """
name: "lin"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
parameters { key: "slo_ms" value { string_value: "250" } }
parameters { key: "profile_batches" value { string_value: "1,2,8" } }
"""


def states(repo: ModelRepository) -> dict[tuple[str, str], tuple[str, str]]:
    return {(s.name, s.version): (s.state, s.reason) for s in repo.index()}


def test_pbtxt_config_gives_spec_with_squishy_settings(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", config=PBTXT)
    repo = ModelRepository(tmp_path)
    [spec] = repo.load("lin")
    assert (spec.name, spec.version, spec.platform, spec.max_batch_size) == ("lin", "1", "onnxruntime_onnx", 8)
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("x", "FP32", (4,))]
    assert [(t.name, t.datatype, t.dims) for t in spec.outputs] == [("y", "FP32", (2,))]
    assert spec.slo_ms == 250.0
    assert profile_batches(spec) == (1, 2, 8)
    assert spec.model_path == tmp_path / "lin" / "1" / "model.onnx"
    assert spec.config.parameters["slo_ms"].string_value == "250"  # the ModelConfig protobuf rides along
    assert repo.is_ready("lin") and repo.spec("lin").version == "1"


def test_yaml_config_moves_plain_settings_into_parameters(tmp_path: Path) -> None:
    config = (
        "max_batch_size: 4\nslo_ms: 40\nprofile_batches: [1, 2, 4]\n"
        "input:\n  - {name: x, data_type: TYPE_FP32, dims: [4]}\n"
    )
    add_model(tmp_path, "lin", config=config, config_name="config.yaml")
    [spec] = ModelRepository(tmp_path).load("lin")
    assert spec.max_batch_size == 4
    assert spec.slo_ms == 40.0
    assert spec.parameters["profile_batches"] == "1,2,4"
    assert [t.name for t in spec.outputs] == ["y"]  # completed from the graph


def test_yaml_typo_of_a_config_field_is_reported_not_taken_as_a_setting(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", config="max_batchsize: 4\n", config_name="config.yaml")
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelLoadError, match="did you mean 'max_batch_size'"):
        repo.load("lin")


def test_missing_config_is_completed_from_the_onnx_graph(tmp_path: Path) -> None:
    add_model(tmp_path, "lin")
    repo = ModelRepository(tmp_path, default_slo_ms=75)
    [spec] = repo.load("lin")
    assert spec.platform == "onnxruntime_onnx"
    assert spec.max_batch_size == DEFAULT_MAX_BATCH_SIZE  # the leading dimension is dynamic
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("x", "FP32", (4,))]
    assert [(t.name, t.datatype, t.dims) for t in spec.outputs] == [("y", "FP32", (2,))]
    assert spec.slo_ms == 75.0
    assert profile_batches(spec) == (1, 2, 4, 8, 16, 32)
    # The effective settings are written into the config clients fetch.
    assert spec.config.parameters["slo_ms"].string_value == "75"
    assert spec.config.max_batch_size == DEFAULT_MAX_BATCH_SIZE


def test_partial_config_keeps_what_it_gives_and_completes_the_rest(tmp_path: Path) -> None:
    config = 'parameters { key: "slo_ms" value { string_value: "30" } }\ninput [ { name: "x" } ]'
    add_model(tmp_path, "lin", config=config)
    [spec] = ModelRepository(tmp_path).load("lin")
    assert spec.slo_ms == 30.0
    assert spec.inputs[0].dims == (4,) and spec.inputs[0].datatype == "FP32"
    assert spec.max_batch_size == DEFAULT_MAX_BATCH_SIZE


def test_model_with_a_fixed_leading_dimension_does_not_batch(tmp_path: Path) -> None:
    add_model(tmp_path, "fixed", model=linear_model(batch_dim=1))
    [spec] = ModelRepository(tmp_path).load("fixed")
    assert spec.max_batch_size == 0
    assert spec.inputs[0].dims == (1, 4)
    assert profile_batches(spec) == (1,)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (PBTXT.replace("TYPE_FP32 dims: [ 4 ]", "TYPE_INT32 dims: [ 4 ]"), "data_type TYPE_INT32 but the graph has"),
        (PBTXT.replace("dims: [ 4 ]", "dims: [ 4, 1 ]"), "has dims [4, 1] but the graph's are [4]"),
        (PBTXT.replace("dims: [ 4 ]", "dims: [ 5 ]"), "has dims [5] but the graph's are [4]"),
        (PBTXT.replace('name: "x"', 'name: "image"'), "config input 'image' is not in the ONNX graph"),
        (PBTXT.replace('string_value: "250"', 'string_value: "fast"'), "slo_ms='fast' is not a positive number"),
        (PBTXT.replace('"1,2,8"', '"1,2,16"'), "goes beyond max_batch_size 8"),
        (PBTXT.replace('name: "lin"', 'name: "other"'), "config name 'other' differs from the directory name"),
        (
            PBTXT.replace("onnxruntime_onnx", "tensorflow_savedmodel"),
            "platform 'tensorflow_savedmodel' is not supported",
        ),
        (PBTXT + "\nbogus: 1", 'has no field named "bogus"'),
    ],
)
def test_config_that_contradicts_the_model_is_unavailable_with_its_reason(
    tmp_path: Path, config: str, reason: str
) -> None:
    add_model(tmp_path, "lin", config=config)
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelLoadError, match="failed to load 'lin'") as err:
        repo.load("lin")
    assert reason in str(err.value)
    assert "\n" not in str(err.value)
    [state] = [s for s in repo.index() if s.name == "lin"]
    assert state.state == UNAVAILABLE and reason in state.reason


def test_invalid_models_are_reported_while_the_others_load(tmp_path: Path) -> None:
    add_model(tmp_path, "good", config=PBTXT.replace('"lin"', '"good"'))
    add_model(tmp_path, "missing_file", versions=())
    (tmp_path / "missing_file" / "1").mkdir()
    (tmp_path / "missing_file" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"')
    add_model(tmp_path, "garbage", versions=())
    (tmp_path / "garbage" / "1").mkdir()
    (tmp_path / "garbage" / "1" / "model.onnx").write_bytes(b"\x00not an onnx file\xff" * 10)
    add_model(tmp_path, "bad_pbtxt", config="max_batch_size: [[[")
    add_model(tmp_path, "no_versions", versions=())
    repo = ModelRepository(tmp_path)
    repo.load_all()
    found = states(repo)
    assert found[("good", "1")] == (READY, "")
    assert found[("missing_file", "1")] == (UNAVAILABLE, "missing_file/1/model.onnx: no such model file")
    assert found[("garbage", "1")][0] == UNAVAILABLE
    assert found[("garbage", "1")][1].startswith("garbage/1/model.onnx: not a valid ONNX model")
    assert found[("bad_pbtxt", "")][0] == UNAVAILABLE
    assert found[("bad_pbtxt", "")][1].startswith("bad_pbtxt/config.pbtxt: invalid config: 1:")
    assert found[("no_versions", "")] == (
        UNAVAILABLE,
        "no_versions: no version directories (numeric subdirectories such as no_versions/1/)",
    )
    assert [s.name for s in repo.index(ready_only=True)] == ["good"]
    with pytest.raises(ModelNotReadyError, match="no such model file"):
        repo.spec("missing_file")


@pytest.mark.parametrize(
    ("policy", "ready"),
    [
        ("", ["3"]),
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { all: {} }", ["1", "2", "3"]),
        ("version_policy: { specific: { versions: [1, 3] } }", ["1", "3"]),
    ],
)
def test_version_policy_selects_versions(tmp_path: Path, policy: str, ready: list[str]) -> None:
    add_model(tmp_path, "lin", config=policy, versions=(1, 2, 3))
    # Like Triton, non-numeric names and names starting with 0 are not versions.
    (tmp_path / "lin" / "0").mkdir()
    (tmp_path / "lin" / "notes").mkdir()
    repo = ModelRepository(tmp_path)
    specs = repo.load("lin")
    assert [s.version for s in specs] == ready
    assert repo.spec("lin").version == ready[-1]  # no version asked: the newest ready one
    if "1" not in ready:
        with pytest.raises(ModelNotFoundError):
            repo.spec("lin", "1")


def test_specific_version_that_does_not_exist_is_reported(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", config="version_policy: { specific: { versions: [1, 5] } }", versions=(1,))
    repo = ModelRepository(tmp_path)
    assert [s.version for s in repo.load("lin")] == ["1"]
    assert states(repo)[("lin", "5")] == (
        UNAVAILABLE,
        "version 5 is asked for by version_policy but lin/5/ does not exist",
    )
    with pytest.raises(ModelNotReadyError, match="version 5 is not ready"):
        repo.spec("lin", "5")


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", ".", "", ".hidden", "a\\b"])
def test_names_that_would_escape_the_repository_are_rejected(tmp_path: Path, name: str) -> None:
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    add_model(tmp_path, "etc")  # a model just outside the repository
    repo = ModelRepository(repo_dir)
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        repo.load(name)
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        repo.unload(name)


def test_symlinks_resolving_outside_the_repository_are_rejected(tmp_path: Path) -> None:
    outside = add_model(tmp_path / "outside", "secret")
    repo_dir = tmp_path / "repo"
    add_model(repo_dir, "inside")
    os.symlink(outside, repo_dir / "linked")
    os.symlink(outside / "1" / "model.onnx", repo_dir / "inside" / "2")  # not a dir: ignored
    add_model(repo_dir, "file_link", versions=())
    (repo_dir / "file_link" / "1").mkdir()
    os.symlink(outside / "1" / "model.onnx", repo_dir / "file_link" / "1" / "model.onnx")
    repo = ModelRepository(repo_dir)
    repo.load_all()
    found = states(repo)
    assert found[("inside", "1")] == (READY, "")
    assert found[("linked", "")] == (UNAVAILABLE, "linked: resolves outside the repository")
    assert found[("file_link", "1")] == (UNAVAILABLE, "file_link/1/model.onnx: resolves outside the repository")


def test_load_unload_reload(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", versions=(1,))
    repo = ModelRepository(tmp_path)
    assert states(repo) == {("lin", ""): (UNAVAILABLE, "not loaded")}
    with pytest.raises(ModelNotReadyError, match="not loaded"):
        repo.spec("lin")
    repo.load("lin")
    assert repo.is_ready("lin")
    repo.unload("lin")
    assert states(repo) == {("lin", "1"): (UNAVAILABLE, "unloaded")}
    assert not repo.is_ready("lin")
    with pytest.raises(ModelNotReadyError, match="unloaded"):
        repo.spec("lin")
    repo.unload("lin")  # unloading twice is harmless
    # A new version on disk is picked up by a reload.
    add_model(tmp_path, "lin", versions=(2,))
    assert [s.version for s in repo.reload("lin")] == ["2"]
    assert states(repo) == {("lin", "2"): (READY, "")}
    with pytest.raises(ModelNotFoundError):
        repo.load("nope")
    with pytest.raises(ModelNotFoundError):
        repo.unload("nope")
    with pytest.raises(ModelNotFoundError):
        repo.spec("nope")


def test_load_with_a_config_override_in_json(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", config=PBTXT)
    repo = ModelRepository(tmp_path)
    override = {"max_batch_size": 2, "parameters": {"slo_ms": {"string_value": "9"}}}
    [spec] = repo.load("lin", config_override=json.dumps(override))
    assert (spec.max_batch_size, spec.slo_ms) == (2, 9.0)
    with pytest.raises(ModelLoadError, match="invalid JSON config"):
        repo.load("lin", config_override="{not json")


def test_integer_input_datatype_is_read_from_the_graph(tmp_path: Path) -> None:
    add_model(tmp_path, "ints", model=linear_model(input_type=TensorProto.INT64))
    [spec] = ModelRepository(tmp_path).load("ints")
    assert spec.inputs[0].datatype == "INT64"


def test_torchscript_model_needs_a_full_config(tmp_path: Path) -> None:
    model_dir = tmp_path / "ts"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.pt").write_bytes(b"placeholder")
    (model_dir / "config.pbtxt").write_text('platform: "pytorch_libtorch"\nmax_batch_size: 4')
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        repo.load("ts")
    torch_missing = "needs PyTorch (pip install torch==2.13.0)" in str(err.value)
    assert torch_missing or "the config lists no inputs" in str(err.value)


def test_a_failed_reload_keeps_the_versions_already_serving(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", config=PBTXT)
    repo = ModelRepository(tmp_path)
    repo.load("lin")
    (tmp_path / "lin" / "config.pbtxt").write_text("max_batch_size: [[[")
    with pytest.raises(ModelLoadError, match="still serving version"):
        repo.reload("lin")
    assert repo.spec("lin").slo_ms == 250.0


def test_two_config_files_are_ambiguous(tmp_path: Path) -> None:
    add_model(tmp_path, "lin", config=PBTXT)
    (tmp_path / "lin" / "config.yaml").write_text("slo_ms: 10\n")
    with pytest.raises(ModelLoadError, match=r"both config\.pbtxt and config\.yaml; keep one"):
        ModelRepository(tmp_path).load("lin")


def test_yaml_parameters_accept_plain_values_and_triton_form(tmp_path: Path) -> None:
    config = "parameters:\n  slo_ms: 12\n  profile_batches: {string_value: '1,4'}\n"
    add_model(tmp_path, "lin", config=config, config_name="config.yaml")
    [spec] = ModelRepository(tmp_path).load("lin")
    assert spec.slo_ms == 12.0 and profile_batches(spec) == (1, 4)


def test_profile_is_measured_once_then_cached_and_a_user_profile_wins(tmp_path: Path) -> None:
    config = 'max_batch_size: 2\nparameters { key: "profile_batches" value { string_value: "1,2" } }'
    add_model(tmp_path, "lin", config=config)
    repo = ModelRepository(tmp_path)
    [spec] = repo.load("lin")
    measured = repo.profile(spec, threads=1, warmup=1, repeats=2)
    assert (measured.model, measured.device) == ("lin", "cpu-1t")
    assert set(measured.batch_ms) <= {1, 2}
    assert (tmp_path / "lin" / "1" / "cpu-1t.profile-cache.json").is_file()
    assert repo.profile(spec, threads=1).batch_ms == measured.batch_ms  # from the cache
    (tmp_path / "lin" / "profile.json").write_text(
        json.dumps({"model": "x", "device": "cpu-1t", "batch_ms": {"1": 5.0, "2": 6.0}})
    )
    user = repo.profile(spec, threads=1)
    assert user.model == "lin" and dict(user.batch_ms) == {1: 5.0, 2: 6.0}


def test_batching_config_for_a_model_with_a_fixed_first_dimension_is_refused(tmp_path: Path) -> None:
    add_model(tmp_path, "fixed", config="max_batch_size: 4", model=linear_model(batch_dim=1))
    with pytest.raises(ModelLoadError, match="graph tensor 'x' has a fixed first dimension 1; set max_batch_size: 0"):
        ModelRepository(tmp_path).load("fixed")


def test_the_profile_cli_writes_where_the_repository_looks(tmp_path: Path) -> None:
    from squishy.cli import main
    from squishy.profiles.io import load_profile

    config = 'max_batch_size: 2\nparameters { key: "profile_batches" value { string_value: "1,2" } }'
    add_model(tmp_path, "lin", config=config)
    model_file = tmp_path / "lin" / "1" / "model.onnx"
    assert main(["profile", str(model_file), "--batches", "1,2", "--repeats", "2", "--warmup", "1"]) == 0
    written = load_profile(tmp_path / "lin" / "1" / "model.profile.json")  # as cleaned for scheduling
    repo = ModelRepository(tmp_path)
    [spec] = repo.load("lin")
    # Read, not measured again: no cache file appears, and ℓ(b) is the one the CLI wrote.
    served = repo.profile(spec, threads=1)
    assert not list((tmp_path / "lin" / "1").glob("*.profile-cache.json"))
    assert dict(served.batch_ms) == dict(written.batch_ms)


TASK = """
name: "task"
platform: "squishy_variants"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ("", "needs parameter variants"),
        ('parameters { key: "variants" value { string_value: "a,a" } }', "lists a model twice"),
        ('parameters { key: "variants" value { string_value: "task" } }', "cannot be its own variant"),
        ('parameters { key: "variants" value { string_value: "../up" } }', "variant '../up'"),
        (
            'parameters { key: "variants" value { string_value: "a" } }\n'
            'parameters { key: "accuracy_floor" value { string_value: "1.5" } }',
            "accuracy_floor='1.5' is not a number within [0, 1]",
        ),
    ],
)
def test_a_task_config_that_cannot_name_its_variants_is_unavailable_with_its_reason(
    tmp_path: Path, parameters: str, reason: str
) -> None:
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "config.pbtxt").write_text(TASK + parameters)
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        repo.load("task")
    assert reason in str(err.value)


def test_a_task_needs_no_version_directory(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    variants = 'parameters { key: "variants" value { string_value: "a,b" } }'
    (tmp_path / "task" / "config.pbtxt").write_text(TASK + variants)
    repo = ModelRepository(tmp_path)
    [spec] = repo.load("task")
    assert spec.platform == "squishy_variants" and spec.version == "1" and spec.model_path is None
    assert [t.name for t in spec.inputs] == ["x"] and spec.parameters["variants"] == "a,b"

"""The profiler: measures ℓ(b) of an ONNX model here, writes squishy's profile format, caches per device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from squishy.cli import main
from squishy.errors import ProfileError
from squishy.profiles import load_profile, save_profile
from squishy.profiles import profiler as profiler_module
from squishy.profiles.profile import Profile
from squishy.profiles.profiler import cache_path, cached_profile, cpu_model_name, measure_profile, write_profile
from tests.runtime.onnx_models import linear_model

FAST = {"warmup": 1, "repeats": 3}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(linear_model(), str(path))
    return path


def test_measured_profile_round_trips_through_the_file_format(model_file: Path, tmp_path: Path) -> None:
    profile = measure_profile(model_file, batches=[1, 2], threads=1, **FAST)
    out = write_profile(profile, tmp_path / "out.json")
    loaded = load_profile(out)
    assert loaded.model == "tiny"
    assert loaded.device == "cpu-1t"
    assert set(loaded.batch_ms) <= {1, 2} and 1 in loaded.batch_ms
    assert all(v > 0 for v in loaded.batch_ms.values())
    assert set(loaded.std_ms) <= {1, 2}
    assert "onnxruntime" in loaded.source and cpu_model_name() in loaded.source
    assert loaded.extra["batches_measured"] == [1, 2]


def test_variable_dimensions_need_a_shape(tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save(linear_model(extra_dim="features"), str(path))
    with pytest.raises(ProfileError, match=r"input 'x' has variable dimensions \[-1\].*--shape x=8"):
        measure_profile(path, batches=[1], **FAST)
    profile = measure_profile(path, batches=[1], shapes={"x": [4]}, **FAST)
    assert profile.extra["input_shapes"] == {"x": [4]}
    with pytest.raises(ProfileError, match="unknown input 'image'"):
        measure_profile(path, batches=[1], shapes={"image": [4]}, **FAST)


def test_a_model_that_does_not_batch_profiles_only_batch_one(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    onnx.save(linear_model(batch_dim=1), str(path))
    with pytest.raises(ProfileError, match="does not batch"):
        measure_profile(path, batches=[1, 2], **FAST)
    assert list(measure_profile(path, batches=[1], **FAST).batch_ms) == [1]


def test_cli_writes_a_profile_next_to_the_model(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["profile", str(model_file), "--batches", "1,2", "--warmup", "1", "--repeats", "2", "--no-progress"])
    assert code == 0
    written = model_file.with_name("tiny.profile.json")
    assert load_profile(written).device == "cpu-1t"
    assert f"wrote {written}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "missing.onnx: no such model file"),
        (["MODEL", "--batches", "1,x"], "--batches '1,x': expected comma-separated positive integers"),
        (["MODEL", "--shape", "x"], "--shape 'x': expected NAME=DIMS"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(
    model_file: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(model_file) if a == "MODEL" else a for a in args]
    assert main(["profile", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"squishy: error: {err.strip().removeprefix('squishy: error: ')}"]
    assert message in err and "Traceback" not in err


def test_cli_missing_file_in_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "squishy.cli", "profile", str(tmp_path / "nope.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"squishy: error: {tmp_path / 'nope.onnx'}: no such model file"]


def test_cached_profile_measures_once_and_reuses_the_cache(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_measure = profiler_module.measure_profile

    def counting(*args: object, **kwargs: object) -> Profile:
        calls.append(kwargs["batches"])
        return real_measure(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(profiler_module, "measure_profile", counting)
    first = cached_profile(model_file, model_name="tiny", threads=1, batches=[1, 2], **FAST)
    assert cache_path(model_file, 1) == model_file.parent / "tiny.cpu-1t.profile-cache.json"
    assert cache_path(model_file, 1).is_file()
    again = cached_profile(model_file, model_name="tiny", threads=1, batches=[2], **FAST)
    assert len(calls) == 1
    assert again.batch_ms == pytest.approx(first.batch_ms, abs=1e-6)  # the file rounds to 1 ns
    # More batch sizes than the cache holds: measure again.
    cached_profile(model_file, model_name="tiny", threads=1, batches=[1, 2, 4], **FAST)
    assert calls[-1] == [1, 2, 4]
    # A model file newer than the cache: measure again.
    stamp_ns = cache_path(model_file, 1).stat().st_mtime_ns + 10**9
    os.utime(model_file, ns=(stamp_ns, stamp_ns))
    cached_profile(model_file, model_name="tiny", threads=1, batches=[1], **FAST)
    assert len(calls) == 3
    # A damaged cache is re-measured rather than fatal.
    cache_path(model_file, 1).write_text("{broken")
    os.utime(cache_path(model_file, 1), ns=(stamp_ns + 10**9, stamp_ns + 10**9))
    cached_profile(model_file, model_name="tiny", threads=1, batches=[1], **FAST)
    assert len(calls) == 4
    # Another thread count is another device: its own cache.
    cached_profile(model_file, model_name="tiny", threads=2, batches=[1], **FAST)
    assert cache_path(model_file, 2).is_file() and len(calls) == 5


def test_user_profile_takes_precedence(model_file: Path, tmp_path: Path) -> None:
    user = tmp_path / "profile.json"
    save_profile(Profile.from_dict({"model": "whatever", "device": "cpu-1t", "batch_ms": {"1": 3.0, "4": 6.0}}), user)
    profile = cached_profile(model_file, model_name="tiny", threads=1, batches=[1, 2], user_profile=user)
    assert profile.model == "tiny"
    assert dict(profile.batch_ms) == {1: 3.0, 4: 6.0}
    assert not cache_path(model_file, 1).exists()  # nothing was measured
    assert json.loads(user.read_text())["model"] == "whatever"  # the user's file is left alone


def test_model_name_defaults_to_the_repository_directory(tmp_path: Path) -> None:
    path = tmp_path / "repo" / "lin" / "3" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(linear_model(), str(path))
    assert measure_profile(path, batches=[1], **FAST).model == "lin"


def test_slots_running_at_once_are_measured_together_and_cached_apart(model_file: Path) -> None:
    together = measure_profile(model_file, batches=(1, 2), repeats=4, warmup=1, concurrency=2)
    assert together.device == "cpu-1tx2"
    assert "2 slots running at once" in together.source
    assert set(together.batch_ms) == {1, 2}
    cached = cached_profile(model_file, model_name="m", batches=(1, 2), repeats=3, warmup=1, concurrency=2)
    assert cached.device == "cpu-1tx2"
    assert cache_path(model_file, 1, 2).is_file()
    assert not cache_path(model_file, 1).exists()


def test_two_models_in_one_directory_keep_their_own_caches(model_file: Path) -> None:
    """A prefix group's trunk and head sit side by side; neither's cache may be read as the other's."""
    other = model_file.with_name("head.onnx")
    onnx.save(linear_model(), str(other))
    assert cache_path(model_file, 1) != cache_path(other, 1)
    assert cache_path(model_file.with_name("model.onnx"), 1).name == "cpu-1t.profile-cache.json"  # Triton's
    cached_profile(model_file, model_name="trunk", threads=1, batches=[1, 2], **FAST)
    cached_profile(other, model_name="head", threads=1, batches=[1, 2], **FAST)
    assert load_profile(cache_path(model_file, 1)).model == "trunk"
    assert load_profile(cache_path(other, 1)).model == "head"

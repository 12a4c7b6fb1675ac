"""An accuracy/cost ladder trained here: CNNs of four widths that read digits in clutter, and test-time
augmentation on top of the widest.

The data: scikit-learn's 1,797 digits (8×8), each rendered into a 40×40 canvas several times with a
random rotation (±25°), scale (0.8–1.2) and position, three distractor strokes and Gaussian noise, so
that the task is hard enough for capacity to matter. Base images are split 2:1 into training and test
before rendering: no digit's renderings are on both sides, and the test accuracy's 95% confidence
interval is a bootstrap over base images (renderings of one digit are not independent samples).

The rungs: a 3-stage CNN (conv 3×3 → batch norm → ReLU → max pool, widths w, 2w, 4w; global average
pool; linear) at w = 4, 8, 16, 32, trained with Adam on a one-cycle rate schedule; and the w = 32 net
averaged over 8 shifted views of its input (test-time augmentation), which costs 8× as much for a few
points of accuracy. Each rung is
exported to ONNX and its accuracy measured by ONNX Runtime on the test set; a rung whose interval
reaches into the interval of the cheaper rung below it is left out, so that neighbouring rungs are told
apart (and a costlier rung that trained worse is no rung at all).

Needs PyTorch (``pip install torch==2.13.0``) to build; the built repository needs only ONNX Runtime.
Building takes a few minutes on 2 cores and is cached: an up-to-date ladder is not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from squishy.variants.entry import Tensor, config_text

RESOLUTION = 40
RENDERINGS_PER_DIGIT = 8
TRAIN_SHARE = 2 / 3
NOISE_STD = 0.3
DISTRACTOR_STROKES = 3
WIDTHS = (4, 8, 16, 32)
TTA_SHIFTS = ((0, 0), (-2, 0), (2, 0), (0, -2), (0, 2), (-2, -2), (2, 2), (-2, 2))
EPOCHS = {4: 10, 8: 10, 16: 10, 32: 8}
BATCH = 64
LEARNING_RATE = 2e-3
BOOTSTRAP_RESAMPLES = 2000
TASK = "clutter-digits"
SLO_MS = 100.0
MAX_BATCH = 32
RECIPE_REVISION = 2
SUMMARY_FILE = "ladder.json"


@dataclass(frozen=True)
class Rung:
    model: str
    width: int
    views: int  # test-time augmentation: the input's shifted views averaged (1: none)
    accuracy: float
    ci_low: float
    ci_high: float
    train_s: float
    kept: bool = True
    why_not: str = ""


@dataclass(frozen=True)
class DigitsInClutter:
    train_x: np.ndarray  # float32 [n, 1, R, R]
    train_y: np.ndarray  # int64 [n]
    test_x: np.ndarray
    test_y: np.ndarray
    test_base: np.ndarray  # the base image each test rendering came from (for the bootstrap)


def render(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8×8 digit (0–1) rendered into a cluttered RESOLUTION² canvas."""
    from scipy import ndimage

    big = np.kron(image, np.ones((3, 3), np.float32))
    big = ndimage.rotate(big, rng.uniform(-25, 25), reshape=False, order=1)
    big = ndimage.zoom(big, rng.uniform(0.8, 1.2), order=1)
    canvas = np.zeros((RESOLUTION, RESOLUTION), np.float32)
    size = min(big.shape[0], RESOLUTION)
    top, left = rng.integers(0, RESOLUTION - size + 1, 2)
    canvas[top : top + size, left : left + size] = big[:size, :size]
    for _ in range(DISTRACTOR_STROKES):
        y, x = rng.integers(0, RESOLUTION, 2)
        length, level = rng.integers(6, 16), rng.uniform(0.5, 1.0)
        if rng.integers(0, 2):
            canvas[y, x : x + length] = np.maximum(canvas[y, x : x + length], level)
        else:
            canvas[y : y + length, x] = np.maximum(canvas[y : y + length, x], level)
    return canvas + rng.normal(0.0, NOISE_STD, canvas.shape).astype(np.float32)


def digits_in_clutter(seed: int = 0) -> DigitsInClutter:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = int(len(images) * TRAIN_SHARE)

    def make(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.stack([render(images[i], rng) for i in ids for _ in range(RENDERINGS_PER_DIGIT)])[:, None]
        repeated = np.repeat(ids, RENDERINGS_PER_DIGIT)
        return x, data.target[repeated].astype(np.int64), repeated

    train_x, train_y, _ = make(order[:cut])
    test_x, test_y, test_base = make(order[cut:])
    return DigitsInClutter(train_x, train_y, test_x, test_y, test_base)


def accuracy_interval(
    correct: np.ndarray, groups: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy and its 95% interval, bootstrapping over ``groups`` (samples of one group move together)."""
    labels, index = np.unique(groups, return_inverse=True)
    hits = np.bincount(index, weights=correct.astype(float), minlength=len(labels))
    sizes = np.bincount(index, minlength=len(labels)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    estimates = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    low, high = np.quantile(estimates, [0.025, 0.975])
    return float(correct.mean()), float(low), float(high)


# ------------------------------------------------------------------------------------------ torch
def _network(width: int) -> Any:
    import torch.nn as nn

    layers: list[Any] = []
    channels = 1
    for stage in range(3):
        out = width * 2**stage
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def _deployable(net: Any, views: int) -> Any:
    """``image`` → (``probabilities``, ``label``); with views > 1, averaged over shifted views."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as functional

    shifts = TTA_SHIFTS[:views]

    class Deployed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if len(shifts) == 1:
                probabilities = functional.softmax(self.net(image), dim=1)
            else:
                padded = functional.pad(image, (2, 2, 2, 2))
                size = image.shape[-1]
                crops = [padded[:, :, 2 + dy : 2 + dy + size, 2 + dx : 2 + dx + size] for dy, dx in shifts]
                logits = self.net(torch.cat(crops, dim=0))
                probabilities = functional.softmax(logits, dim=1).reshape(len(shifts), -1, 10).mean(dim=0)
            return probabilities, probabilities.argmax(dim=1, keepdim=True)

    return Deployed().eval()


def train(width: int, data: DigitsInClutter, seed: int, progress: Callable[[str], None]) -> tuple[Any, float]:
    import torch
    import torch.nn.functional as functional

    torch.manual_seed(seed)
    net = _network(width)
    optimizer = torch.optim.Adam(net.parameters(), LEARNING_RATE)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    epochs = EPOCHS[width]
    # Decaying the rate to zero settles the weights and batch norm's statistics: at a constant rate the
    # wider nets ended some runs far below the narrower ones.
    steps = epochs * -(-len(x) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=steps)
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for first in range(0, len(x), BATCH):
            batch = order[first : first + BATCH]
            optimizer.zero_grad()
            functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
        progress(f"width {width}: epoch {epoch + 1}/{epochs} ({time.perf_counter() - start:.0f} s)")
    net.eval()
    return net, time.perf_counter() - start


def export(net: Any, views: int, path: Path) -> None:
    import torch

    model = _deployable(net, views)
    example = torch.zeros(2, 1, RESOLUTION, RESOLUTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["probabilities", "label"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}, "label": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def onnx_accuracy(path: Path, data: DigitsInClutter) -> tuple[float, float, float, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    chunks = [data.test_x[i : i + 256] for i in range(0, len(data.test_x), 256)]
    probabilities = np.concatenate([session.run(["probabilities"], {"image": chunk})[0] for chunk in chunks])
    correct = probabilities.argmax(axis=1) == data.test_y
    return (*accuracy_interval(correct, data.test_base), probabilities)


# ------------------------------------------------------------------------------------------ repository
INPUTS = (Tensor("image", "TYPE_FP32", (1, RESOLUTION, RESOLUTION)),)
OUTPUTS = (Tensor("probabilities", "TYPE_FP32", (10,)), Tensor("label", "TYPE_INT64", (1,)))


def _config(name: str, description: str, parameters: dict[str, str]) -> str:
    settings = {"slo_ms": f"{SLO_MS:g}", "description": description, **parameters}
    return config_text(name, "onnxruntime_onnx", MAX_BATCH, INPUTS, OUTPUTS, settings)


def task_config(variants: Sequence[Rung], accuracy_floor: float = 0.0) -> str:
    """The task's entry: requests to it are answered by whichever variant the plan chose."""
    settings = {
        "slo_ms": f"{SLO_MS:g}",
        "variants": ",".join(r.model for r in variants),
        "accuracy_floor": f"{accuracy_floor:g}",
    }
    return config_text(TASK, "squishy_variants", MAX_BATCH, INPUTS, OUTPUTS, settings)


def _recipe(seed: int) -> str:
    import torch

    text = json.dumps(
        {
            "revision": RECIPE_REVISION,
            "seed": seed,
            "torch": torch.__version__,
            "widths": WIDTHS,
            "epochs": EPOCHS,
            "resolution": RESOLUTION,
            "renderings": RENDERINGS_PER_DIGIT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_ladder(
    directory: str | Path, *, seed: int = 0, force: bool = False, progress: Callable[[str], None] = print
) -> list[Rung]:
    """Train, export and measure the ladder into ``directory`` (a model repository); cached."""
    try:
        import torch
    except ModuleNotFoundError:
        from squishy.errors import SquishyError

        raise SquishyError("building the ladder needs PyTorch: pip install torch==2.13.0") from None
    root = Path(directory)
    summary_path = root / SUMMARY_FILE
    recipe = _recipe(seed)
    if summary_path.exists() and not force:
        summary = json.loads(summary_path.read_text())
        if summary.get("recipe") == recipe:
            progress(f"ladder in {root} is up to date")
            return [Rung(**r) for r in summary["rungs"]]
    torch.set_num_threads(2)
    started = time.perf_counter()
    progress("rendering digits in clutter")
    data = digits_in_clutter(seed)
    measured: list[Rung] = []
    for width in WIDTHS:
        net, train_s = train(width, data, seed, progress)
        for views in (1, len(TTA_SHIFTS)) if width == WIDTHS[-1] else (1,):
            name = f"clutter-w{width}" + (f"x{views}" if views > 1 else "")
            path = root / name / "1" / "model.onnx"
            export(net, views, path)
            accuracy, low, high, _ = onnx_accuracy(path, data)
            measured.append(Rung(name, width, views, accuracy, low, high, train_s))
            progress(f"{name}: accuracy {accuracy:.4f} (95% CI {low:.4f}–{high:.4f})")
    rungs = _separated(measured)
    kept = [r for r in rungs if r.kept]
    for rung in rungs:
        (root / rung.model).mkdir(parents=True, exist_ok=True)
        if not rung.kept:
            continue
        description = f"CNN width {rung.width}" + (f", mean of {rung.views} shifted views" if rung.views > 1 else "")
        (root / rung.model / "config.pbtxt").write_text(
            _config(
                rung.model,
                description + " on digits in clutter",
                {"accuracy": f"{rung.accuracy:.4f}", "accuracy_ci95": f"{rung.ci_low:.4f},{rung.ci_high:.4f}"},
            )
        )
    (root / TASK).mkdir(parents=True, exist_ok=True)
    (root / TASK / "config.pbtxt").write_text(task_config(kept))
    summary = {
        "recipe": recipe,
        "seed": seed,
        "built_s": round(time.perf_counter() - started, 1),
        "test_set": {
            "renderings": len(data.test_y),
            "base_images": len(np.unique(data.test_base)),
            "note": "scikit-learn digits, rendered in clutter; 95% CI by bootstrap over base images",
        },
        "rungs": [asdict(r) for r in rungs],
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    progress(f"ladder built in {summary['built_s']:.0f} s: {', '.join(r.model for r in kept)}")
    return rungs


def _separated(rungs: Sequence[Rung]) -> list[Rung]:
    """Walking up in cost (``rungs`` come cheapest first), keep a rung only if its interval lies above the
    interval of the last rung kept: a costlier rung that is not measurably more accurate is no rung."""
    out: list[Rung] = []
    last: Rung | None = None
    for rung in rungs:
        if last is not None and rung.ci_low <= last.ci_high:
            out.append(Rung(**{**asdict(rung), "kept": False, "why_not": f"its interval overlaps {last.model}'s"}))
            continue
        out.append(rung)
        last = rung
    return out


def main() -> None:  # python -m squishy.variants.ladder DIR
    import sys

    build_ladder(sys.argv[1] if len(sys.argv) > 1 else "examples/ladder", force="--force" in sys.argv)


if __name__ == "__main__":
    main()

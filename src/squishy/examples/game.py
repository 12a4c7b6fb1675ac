"""The game-like prefix example: several classifiers that share one costly trunk, each head trained here.

Nexus's game application runs several recognizers on each frame that differ only in their last layers.
Here a *family* is one trunk (seeded random weights) cut at ``features``, and each model adds its own
head: a linear softmax layer trained with scikit-learn on the trunk's features of scikit-learn's 8×8
digits, upsampled. The heads answer different questions about the same image (``TASKS``). Two trunks:

- ``game`` (the example repository's ``game-*``): ResNet-18's topology at half width on 3×112×112, as
  ``resnet18-half``, its 256 pooled channels the features. On a CPU its time per image barely falls
  with the batch size (facts.md: CNNs here are compute-bound from batch 1).
- ``tower``: an MLP on the digits at 32×32 (1024 inputs), four 4096-wide ReLU layers, the last layer
  the features (54 M weights, 218 MB). At batch 1 it is bound by reading its weights from memory, so a
  batch of 64 costs about seven times a batch of 1, not 64 times: the steep batching curve a GPU gives
  CNNs, which is where sharing one trunk's batch across many models pays.

The models of a family have the same trunk graph with the same weights, so ``squishy serve`` forms a
prefix group of them (``squishy.runtime.prefix``), declared by each config's ``prefix_tensor: features``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from squishy.examples.cnn import resnet18_stages
from squishy.examples.graph import FLOAT, GraphBuilder, tensor_info

PREFIX_TENSOR = "features"
TEST_FRACTION = 0.25
PIXEL_MAX = 16.0  # load_digits pixels are 0..16

# task → (classes, label of a digit). The example repository builds the first three.
TASKS: dict[str, tuple[int, Callable[[int], int]]] = {
    "digit": (10, lambda digit: digit),
    "parity": (2, lambda digit: digit % 2),
    "large": (2, lambda digit: int(digit >= 5)),
    "mod3": (3, lambda digit: digit % 3),
    "prime": (2, lambda digit: int(digit in (2, 3, 5, 7))),
    "loop": (2, lambda digit: int(digit in (0, 6, 8, 9))),
    **{f"is{k}": (2, lambda digit, k=k: int(digit == k)) for k in range(10)},
}
EXAMPLE_TASKS = ("digit", "parity", "large")

GAME_RESOLUTION = 112
GAME_WIDTH = 32  # ResNet-18's first stage at half width
TOWER_SIDE = 32
TOWER_WIDTH = 4096
TOWER_LAYERS = 4


def _upsampled(pixels: np.ndarray, side: int) -> np.ndarray:
    """scikit-learn's 8×8 digits (raw 0–16 rows of 64) as FP32 [n, side, side] in 0..1."""
    scale = side // 8
    images = pixels.reshape(-1, 8, 8).astype(np.float32) / PIXEL_MAX
    return np.kron(images, np.ones((1, scale, scale), dtype=np.float32))


def digit_images(pixels: np.ndarray) -> np.ndarray:
    """The digits as the ``game`` trunk's input: FP32 images [n, 3, 112, 112] in 0..1."""
    return np.repeat(_upsampled(pixels, GAME_RESOLUTION)[:, None], 3, axis=1)


def tower_inputs(pixels: np.ndarray) -> np.ndarray:
    """The digits as the ``tower`` trunk's input: FP32 rows [n, 1024], a 32×32 image each, in 0..1."""
    return _upsampled(pixels, TOWER_SIDE).reshape(len(pixels), -1)


def _game_trunk(g: GraphBuilder, x: str) -> str:
    x, _ = resnet18_stages(g, x, GAME_WIDTH)
    return g.node("Flatten", [g.node("GlobalAveragePool", [x])], output=PREFIX_TENSOR, axis=1)


def _tower_trunk(g: GraphBuilder, x: str) -> str:
    width = TOWER_SIDE * TOWER_SIDE
    for layer in range(TOWER_LAYERS):
        x = g.dense(x, width, TOWER_WIDTH)
        x = g.node("Relu", [x], output=PREFIX_TENSOR if layer == TOWER_LAYERS - 1 else None)
        width = TOWER_WIDTH
    return x


@dataclass(frozen=True)
class Trunk:
    """One family's shared trunk: how to build it and how the digits become its input."""

    family: str
    input_name: str
    input_dims: tuple[int, ...]  # without the batch dimension
    features: int
    build: Callable[[GraphBuilder, str], str]  # adds the trunk's nodes on the input; returns ``features``
    inputs: Callable[[np.ndarray], np.ndarray]
    description: str


TRUNKS = {
    "game": Trunk(
        "game",
        "image",
        (3, GAME_RESOLUTION, GAME_RESOLUTION),
        GAME_WIDTH * 8,
        _game_trunk,
        digit_images,
        f"ResNet-18 topology at width {GAME_WIDTH} on 3x{GAME_RESOLUTION}x{GAME_RESOLUTION}",
    ),
    "tower": Trunk(
        "tower",
        "pixels",
        (TOWER_SIDE * TOWER_SIDE,),
        TOWER_WIDTH,
        _tower_trunk,
        tower_inputs,
        f"MLP {TOWER_SIDE * TOWER_SIDE}->{TOWER_LAYERS}x{TOWER_WIDTH} ReLU on {TOWER_SIDE}x{TOWER_SIDE} digits",
    ),
}


def model_name(family: str, task: str) -> str:
    return f"{family}-{task}"


def _graph(trunk: Trunk, seed: int, head: tuple[np.ndarray, np.ndarray] | None, name: str, doc: str) -> onnx.ModelProto:
    """The trunk alone (``head`` None: its output is ``features``) or the trunk and a trained head."""
    g = GraphBuilder(seed)
    features = trunk.build(g, trunk.input_name)
    inputs = [tensor_info(trunk.input_name, FLOAT, ["batch", *trunk.input_dims])]
    if head is None:
        return g.model(inputs, [tensor_info(PREFIX_TENSOR, FLOAT, ["batch", trunk.features])], name, doc)
    weight, bias = head
    logits = g.node("Gemm", [features, g.constant(weight, "head_w"), g.constant(bias, "head_b")])
    g.node("Softmax", [logits], output="probabilities", axis=1)
    classes = weight.shape[1]
    return g.model(inputs, [tensor_info("probabilities", FLOAT, ["batch", classes])], name, doc)


@dataclass(frozen=True)
class GameHead:
    model: onnx.ModelProto
    test_accuracy: float
    test_samples: int


@functools.lru_cache(maxsize=2)
def _features(family: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The trunk's features of a seeded, stratified 75/25 split of the digits: (train, test, labels...)."""
    import onnxruntime as ort
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    trunk = TRUNKS[family]
    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        data.data, data.target, test_size=TEST_FRACTION, random_state=seed, stratify=data.target
    )
    graph = _graph(trunk, seed, None, f"{family}_trunk", "trunk only")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def features(pixels: np.ndarray) -> np.ndarray:
        rows = trunk.inputs(pixels)
        batches = [session.run(None, {trunk.input_name: rows[i : i + 64]})[0] for i in range(0, len(rows), 64)]
        return np.concatenate(batches)

    return features(train_x), features(test_x), train_y, test_y


def game_head(task: str, seed: int = 0, family: str = "game") -> GameHead:
    """Train ``task``'s head on ``family``'s trunk features (logistic regression on standardized features,
    folded into one Gemm) and return the whole model with its accuracy on the held-out quarter."""
    from sklearn.linear_model import LogisticRegression

    trunk = TRUNKS[family]
    classes, label = TASKS[task]
    train_f, test_f, train_digits, test_digits = _features(family, seed)
    train_y = np.array([label(int(d)) for d in train_digits])
    test_y = np.array([label(int(d)) for d in test_digits])
    mean = train_f.mean(axis=0)
    scale = train_f.std(axis=0) + 1e-6
    classifier = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    classifier.fit((train_f - mean) / scale, train_y)
    accuracy = float(classifier.score((test_f - mean) / scale, test_y))
    coefficients = classifier.coef_  # [k, features], k = 1 for two classes
    intercepts = classifier.intercept_
    if classes == 2:  # scikit-learn keeps one row for two classes: its logit is class 1 against class 0
        coefficients = np.vstack([np.zeros_like(coefficients), coefficients])
        intercepts = np.concatenate([[0.0], intercepts])
    # Standardization folded into the layer: (f - mean) / scale · Wᵀ + b.
    weight = (coefficients / scale).T.astype(np.float32)
    bias = (intercepts - (coefficients * (mean / scale)).sum(axis=1)).astype(np.float32)
    name = model_name(family, task)
    doc = (
        f"{trunk.description} (random weights, seed {seed}), cut at {PREFIX_TENSOR!r}; "
        f"head trained on scikit-learn's digits: {name}"
    )
    model = _graph(trunk, seed, (weight, bias), name.replace("-", "_"), doc)
    return GameHead(model, accuracy, len(test_y))

"""The game-like prefix example: several classifiers that share one costly trunk, each head trained here.

Nexus's game application runs several recognizers on each frame that differ only in their last layers.
Here the trunk is ResNet-18's topology at half width on 3×112×112 (seeded random weights, as
``resnet18-half``), cut at ``features`` (its 256 pooled channels); each model adds its own head, a
linear softmax layer trained with scikit-learn on the trunk's features of scikit-learn's 8×8 digits,
upsampled to 112×112. The heads answer different questions about the same image:

- ``game-digit``: which digit (10 classes);
- ``game-parity``: even or odd (2 classes);
- ``game-large``: below 5 or not (2 classes).

The three models' trunks are the same graph with the same weights, so ``squishy serve`` forms a prefix
group of them (``squishy.runtime.prefix``), declared by each config's ``prefix_tensor: features``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx

from squishy.examples.cnn import resnet18_stages
from squishy.examples.graph import FLOAT, GraphBuilder, tensor_info

RESOLUTION = 112
WIDTH = 32  # ResNet-18's first stage at half width
FEATURES = WIDTH * 8
PREFIX_TENSOR = "features"
TEST_FRACTION = 0.25
PIXEL_MAX = 16.0  # load_digits pixels are 0..16
# name → (classes, label of a digit)
TASKS = {
    "game-digit": (10, lambda digit: digit),
    "game-parity": (2, lambda digit: digit % 2),
    "game-large": (2, lambda digit: int(digit >= 5)),
}


def digit_images(pixels: np.ndarray) -> np.ndarray:
    """scikit-learn's 8×8 digits (raw 0–16 rows of 64) as FP32 images [n, 3, 112, 112] in 0..1."""
    scale = RESOLUTION // 8
    images = pixels.reshape(-1, 8, 8).astype(np.float32) / PIXEL_MAX
    upsampled = np.kron(images, np.ones((1, scale, scale), dtype=np.float32))
    return np.repeat(upsampled[:, None], 3, axis=1)


def _trunk(g: GraphBuilder) -> str:
    x, _ = resnet18_stages(g, "image", WIDTH)
    return g.node("Flatten", [g.node("GlobalAveragePool", [x])], output=PREFIX_TENSOR, axis=1)


def _graph(seed: int, head: tuple[np.ndarray, np.ndarray] | None, name: str, doc: str) -> onnx.ModelProto:
    """The trunk alone (``head`` None: its output is ``features``) or the trunk and a trained head."""
    g = GraphBuilder(seed)
    features = _trunk(g)
    image = [tensor_info("image", FLOAT, ["batch", 3, RESOLUTION, RESOLUTION])]
    if head is None:
        return g.model(image, [tensor_info(PREFIX_TENSOR, FLOAT, ["batch", FEATURES])], name, doc)
    weight, bias = head
    logits = g.node("Gemm", [features, g.constant(weight, "head_w"), g.constant(bias, "head_b")])
    g.node("Softmax", [logits], output="probabilities", axis=1)
    classes = weight.shape[1]
    return g.model(image, [tensor_info("probabilities", FLOAT, ["batch", classes])], name, doc)


@dataclass(frozen=True)
class GameHead:
    model: onnx.ModelProto
    test_accuracy: float
    test_samples: int


@functools.lru_cache(maxsize=2)
def _features(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The trunk's features of a seeded, stratified 75/25 split of the digits: (train, test, labels...)."""
    import onnxruntime as ort
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        data.data, data.target, test_size=TEST_FRACTION, random_state=seed, stratify=data.target
    )
    trunk = _graph(seed, None, "game_trunk", "trunk only")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(trunk.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def features(pixels: np.ndarray) -> np.ndarray:
        images = digit_images(pixels)
        return np.concatenate([session.run(None, {"image": images[i : i + 64]})[0] for i in range(0, len(images), 64)])

    return features(train_x), features(test_x), train_y, test_y


def game_head(name: str, seed: int = 0) -> GameHead:
    """Train ``name``'s head on the trunk's features (logistic regression on standardized features, folded
    into one Gemm) and return the whole model with its accuracy on the held-out quarter."""
    from sklearn.linear_model import LogisticRegression

    classes, label = TASKS[name]
    train_f, test_f, train_digits, test_digits = _features(seed)
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
    doc = (
        f"ResNet-18 topology at width {WIDTH} on 3x{RESOLUTION}x{RESOLUTION} (random weights, seed {seed}), "
        f"cut at {PREFIX_TENSOR!r}; head trained on scikit-learn's digits: {name}"
    )
    model = _graph(seed, (weight, bias), name.replace("-", "_"), doc)
    return GameHead(model, accuracy, len(test_y))

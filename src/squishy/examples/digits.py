"""``digits``: a real classifier, trained here on scikit-learn's bundled 8×8 digits, exported to ONNX by hand.

The network is scikit-learn's ``MLPClassifier`` (one ReLU hidden layer, softmax output). The ONNX graph
takes raw pixel values (0–16, as ``sklearn.datasets.load_digits`` gives them) and scales them itself, so a
client sends the data set's rows unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx

from squishy.examples.graph import FLOAT, INT64, GraphBuilder, tensor_info

HIDDEN_UNITS = 128
MAX_ITERATIONS = 200
TEST_FRACTION = 0.25
# load_digits pixels are counts of set pixels in 4×4 blocks: 0..16.
PIXEL_MAX = 16.0


@dataclass(frozen=True)
class DigitsModel:
    classifier: object  # sklearn.neural_network.MLPClassifier, trained
    test_accuracy: float
    test_inputs: np.ndarray  # raw pixels, float32 [n, 64]
    test_labels: np.ndarray  # int64 [n]


def train_digits(seed: int = 0) -> DigitsModel:
    """Train the classifier on a seeded, stratified 75/25 split; deterministic for a given seed."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    data = load_digits()
    pixels = data.data.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, data.target, test_size=TEST_FRACTION, random_state=seed, stratify=data.target
    )
    classifier = MLPClassifier(hidden_layer_sizes=(HIDDEN_UNITS,), max_iter=MAX_ITERATIONS, random_state=seed)
    with warnings.catch_warnings():
        # Adam has not fully converged at MAX_ITERATIONS; test accuracy is already ~0.98 and more
        # iterations cost build time without gaining accuracy.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(train_x / PIXEL_MAX, train_y)
    accuracy = float(classifier.score(test_x / PIXEL_MAX, test_y))
    return DigitsModel(classifier, accuracy, test_x, test_y.astype(np.int64))


def digits_onnx(model: DigitsModel) -> onnx.ModelProto:
    """The trained MLP as ONNX: ``pixels`` FP32 [-1, 64] → ``probabilities`` FP32 [-1, 10], ``label`` INT64 [-1, 1]."""
    clf = model.classifier
    if getattr(clf, "activation", None) != "relu" or getattr(clf, "out_activation_", None) != "softmax":
        raise ValueError("digits_onnx expects a ReLU MLPClassifier with a softmax output")
    g = GraphBuilder(seed=0)
    x = g.node("Mul", ["pixels", g.constant(np.array(1.0 / PIXEL_MAX, dtype=np.float32), "scale")])
    layers = list(zip(clf.coefs_, clf.intercepts_, strict=True))
    for i, (weight, bias) in enumerate(layers):
        x = g.node("MatMul", [x, g.constant(weight.astype(np.float32), "w")])
        x = g.node("Add", [x, g.constant(bias.astype(np.float32), "b")])
        if i < len(layers) - 1:
            x = g.relu(x)
    probabilities = g.node("Softmax", [x], output="probabilities", axis=1)
    # keepdims: a per-item scalar is dims [1] in Triton configs (they cannot be empty), so label is [-1, 1].
    g.node("ArgMax", [probabilities], output="label", axis=1, keepdims=1)
    return g.model(
        [tensor_info("pixels", FLOAT, ["batch", 64])],
        [tensor_info("probabilities", FLOAT, ["batch", 10]), tensor_info("label", INT64, ["batch", 1])],
        "digits",
        f"MLP ({HIDDEN_UNITS} ReLU units) trained on sklearn's digits; test accuracy {model.test_accuracy:.4f}",
    )

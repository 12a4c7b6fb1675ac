"""The example model repository: real ONNX models of clearly different cost, built here in seconds.

``build_examples(DIR)`` writes ``digits`` (trained on scikit-learn's digits), ``smallcnn`` and
``resnet18-half`` (random weights), and, when ``rapidocr-onnxruntime`` is installed, its pretrained
PP-OCR models, each with a ``config.pbtxt`` carrying squishy's ``slo_ms`` and ``profile_batches``.
"""

from squishy.examples.build import BuildResult, ExampleModel, build_examples, example_models

__all__ = ["BuildResult", "ExampleModel", "build_examples", "example_models"]

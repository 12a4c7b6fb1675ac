"""Optional real models: PP-OCRv4 text detection and recognition and the PP-OCR direction classifier,
as shipped (pretrained, Apache-2.0) inside the ``rapidocr-onnxruntime`` wheel. Used only when that package
is installed (``pip install 'squishy[ocr]'``); nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

PACKAGE = "rapidocr_onnxruntime"
DISTRIBUTION = "rapidocr-onnxruntime"

# example model name → file inside the package's models/ folder
MODEL_FILES = {
    "ppocr-det": "ch_PP-OCRv4_det_infer.onnx",
    "ppocr-cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ppocr-rec": "ch_PP-OCRv4_rec_infer.onnx",
}


def models_dir() -> Path | None:
    """The package's models/ folder, found without importing it (its __init__ imports OpenCV), or None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if folder.is_dir() else None


def package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return ""


def model_bytes(name: str) -> bytes:
    """The ONNX file of one of MODEL_FILES; raises FileNotFoundError when the package or file is missing."""
    folder = models_dir()
    if folder is None:
        raise FileNotFoundError(f"{DISTRIBUTION} is not installed")
    path = folder / MODEL_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{DISTRIBUTION} {package_version()} has no {MODEL_FILES[name]}")
    return path.read_bytes()

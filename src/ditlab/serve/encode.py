"""Result files in memory: PNG, GIF/MP4 (``ditlab.data.video_io``), ADM ``.npz`` (``save_npz``'s layout)."""
from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ditlab.sampling.outputs import make_grid


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) -> PNG bytes."""
    from PIL import Image

    pil = Image.fromarray(image[..., 0], mode="L") if image.shape[-1] == 1 else Image.fromarray(image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def still(sample: np.ndarray) -> np.ndarray:
    """One sample as a still image: an image itself, a video as its frames in a row (a film strip)."""
    if sample.ndim == 4:  # (F, H, W, C)
        return np.concatenate(list(sample), axis=1)
    return sample


def preview_png(images: np.ndarray) -> bytes:
    """The live preview of one job: its current x0 images (video: first frames) tiled in a grid."""
    frames = images[:, 0] if images.ndim == 5 else images
    return png_bytes(make_grid(frames, pad=1))


def video_bytes(frames: np.ndarray, fps: float, ext: str) -> bytes:
    """uint8 frames (F, H, W, C) as a ``.gif`` or ``.mp4`` file's bytes."""
    from ditlab.data.video_io import write_video

    with tempfile.TemporaryDirectory(prefix="ditlab-serve-") as tmp:
        path = write_video(Path(tmp) / f"sample{ext}", frames, fps=fps)
        return path.read_bytes()


def npz_bytes(images: np.ndarray, labels: Sequence[int] | None, prompts: Sequence[str] | None) -> bytes:
    """The ADM ``.npz`` of a set (``ditlab.sampling.save_npz``: arr_0, labels, prompts)."""
    from ditlab.sampling import save_npz

    with tempfile.TemporaryDirectory(prefix="ditlab-serve-") as tmp:
        path = save_npz(images, Path(tmp) / "samples.npz",
                        labels=np.asarray(labels) if labels is not None else None, prompts=prompts)
        return path.read_bytes()

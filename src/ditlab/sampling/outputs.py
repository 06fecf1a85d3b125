"""What generation writes: uint8 images, labelled grids, PNGs and ADM ``.npz`` files (all atomic)."""
from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ditlab.errors import UserError
from ditlab.files import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded as ADM does."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _label_strip(labels: Sequence[str], row_height: int, pad: int, channels: int) -> np.ndarray:
    """A column of row labels drawn with PIL's built-in font: (rows * (row_height + pad) + pad, W, C)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    text_width = max(int(font.getlength(t)) for t in labels) if labels else 0
    width = min(text_width, 360) + 2 * pad + 2
    height = len(labels) * (row_height + pad) + pad
    strip = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(strip)
    for r, text in enumerate(labels):
        y = pad + r * (row_height + pad) + max(0, (row_height - 11) // 2)
        draw.text((pad, y), text, fill=255, font=font)
    array = np.asarray(strip, dtype=np.uint8)[..., None]  # (H, W, 1)
    return np.repeat(array, channels, axis=-1)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2,
              row_labels: Sequence[str] | None = None) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images into one (rows*H, cols*W, C) array with a black border.

    ``row_labels`` (one per row) are written in a margin on the left.
    """
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    if row_labels:
        labels = list(row_labels)[:nrows] + [""] * max(0, nrows - len(row_labels))
        grid = np.concatenate([_label_strip(labels, h, pad, c), grid], axis=1)
    return grid


def row_labels_for(descriptions: Sequence[str], ncols: int) -> list[str] | None:
    """One label per grid row when every row holds samples of one description, else None."""
    if not descriptions:
        return None
    rows = [descriptions[i : i + ncols] for i in range(0, len(descriptions), ncols)]
    if any(len(set(row)) != 1 for row in rows):
        return None
    return [row[0] for row in rows]


def _pil(array: np.ndarray):
    from PIL import Image

    if array.shape[-1] == 1:
        return Image.fromarray(array[..., 0], mode="L")
    return Image.fromarray(array)


def check_writable(path: str | Path) -> Path:
    """Fail early (UserError) when ``path`` cannot be written, before any sampling work."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder '{parent}' ({err.strerror}): choose a writable path") from None
    try:  # a real write: permission bits do not tell root (or a read-only mount) the truth
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise UserError(f"output folder '{parent}' is not writable ({err.strerror}): choose a writable path") from None
    if path.is_dir():
        raise UserError(f"output '{path}' is a folder: give a file name")
    return path


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W, C) image atomically."""
    return atomic_write(path, lambda tmp: _pil(array).save(tmp, format="PNG"), durable=False)


def save_grid(images: np.ndarray, path: str | Path, ncols: int | None = None,
              row_labels: Sequence[str] | None = None) -> Path:
    return save_png(make_grid(images, ncols, row_labels=row_labels), path)


def save_npz(images: np.ndarray, path: str | Path, *, labels: np.ndarray | None = None,
             prompts: Sequence[str] | None = None) -> Path:
    """ADM layout: ``arr_0`` uint8 (N, H, W, C) (video: (N, F, H, W, C)), optional ``labels`` (N,) and
    ``prompts`` (N,) strings, written atomically."""
    arrays = {"arr_0": images}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if prompts is not None:
        arrays["prompts"] = np.asarray(list(prompts), dtype=str)
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))

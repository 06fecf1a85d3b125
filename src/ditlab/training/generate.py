"""Turn a trained DiT into images: per-sample seeds, guidance, decoding, grids and ADM ``.npz`` files."""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ditlab.errors import ProcessError, UserError


@torch.no_grad()
def generate(
    model: nn.Module,
    process,
    autoencoder,
    latent_shape: tuple[int, int, int],
    labels: torch.Tensor | None,
    seeds: Sequence[int],
    *,
    num_classes: int,
    sampler: str | None = None,
    steps: int = 50,
    cfg_scale: float = 1.0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Sample ``len(seeds)`` images; sample i uses only ``seeds[i]``, so results do not depend on batching.

    Returns uint8 images (N, H, W, C) in the ADM layout.
    """
    from ditlab.diffusion import per_sample_noise

    device = torch.device(device)
    model.eval()
    out = []
    n = len(seeds)
    guided = cfg_scale != 1.0 and num_classes > 0
    for start in range(0, n, batch_size):
        batch_seeds = list(seeds[start : start + batch_size])
        noise = per_sample_noise(latent_shape, batch_seeds).to(device)  # (B, C, h, w)
        generators = [torch.Generator(device="cpu").manual_seed(int(s) + 2**31) for s in batch_seeds]
        kwargs, uncond = {}, None
        if num_classes > 0:
            y = labels[start : start + batch_size].to(device)
            kwargs = {"y": y}
            if guided:
                uncond = {"y": torch.full_like(y, num_classes)}  # the null class
        latents = process.sample(
            model,
            noise,
            sampler=sampler or None,
            steps=steps,
            model_kwargs=kwargs,
            cfg_scale=cfg_scale if guided else 1.0,
            uncond_model_kwargs=uncond,
            generators=generators,
        )
        images = autoencoder.decode(latents.to(device))  # (B, C, H, W) in [-1, 1]
        out.append(to_uint8(images))
        if progress is not None:
            progress(len(batch_seeds))
    return np.concatenate(out)


def check_sampling(process, sampler: str | None, steps: int) -> None:
    """Raise ProcessError for a sampler or step count ``process`` cannot run, before any work starts."""
    sampler = sampler or process.default_sampler
    if sampler not in process.samplers:
        raise ProcessError(f"sampler {sampler!r} does not run the {process.kind} process: pass --sampler with one of "
                           f"{', '.join(process.samplers)}")
    if process.kind == "flow":
        process.sampling_times(steps)
    else:
        process.spaced(steps, sampler)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded as ADM does."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images into one (rows*H, cols*W, C) array with a black border."""
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    return grid


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
    """Write a uint8 (H, W, C) image atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    _pil(array).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def save_grid(images: np.ndarray, path: str | Path, ncols: int | None = None) -> Path:
    return save_png(make_grid(images, ncols), path)


def save_npz(images: np.ndarray, labels: np.ndarray | None, path: str | Path) -> Path:
    """ADM layout: ``arr_0`` uint8 (N, H, W, C) and ``labels`` (N,), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    arrays = {"arr_0": images}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path

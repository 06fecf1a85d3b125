"""Figures that explain the concepts (``ditlab show``, docs/tutorial.ipynb), drawn with matplotlib.

* ``noising_figure``: the forward process of DDPM and of rectified flow side by side on one image, at the
  same fractions of the way from data to noise, with the signal-to-noise ratio alpha^2 / sigma^2 under
  each panel (the same noise in both rows).
* ``patches_figure``: an image, its latent channels, and the patch grid the DiT cuts the latent into,
  with the number of tokens for each patch size.

Both read the process and the autoencoder only through their public interfaces (``q_sample``,
``encode``), so they show what training sees.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ditlab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_FILE_SIZE = 64


def _figure(width: float, height: float, rows: int, cols: int):
    """A figure and its (rows, cols) axes without pyplot: no global backend or figure state is touched, so
    notebooks keep their own backend (a returned figure displays there) and nothing leaks between calls."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, cols, squeeze=False)


def load_image(source: str | Path, *, index: int = 0, image_size: int | None = None,
               channels: int | None = None) -> torch.Tensor:
    """One image (1, C, H, W) in [-1, 1] from an image file, a built-in dataset name or an image folder.

    Args:
        source: ``mnist``, ``digits``, an image folder, or an image file.
        index: which item of a dataset.
        image_size: side of the square (ADM centre crop); default: a dataset's own size, 64 for a file.
        channels: 1 or 3; default: the file's (grayscale stays grayscale), 1 for built-ins.
    """
    from ditlab.data import BUILTIN_DATASETS, build_dataset

    path = Path(source)
    if str(source) in BUILTIN_DATASETS or path.is_dir():
        size = image_size or {"mnist": 32, "digits": 8}.get(str(source), DEFAULT_FILE_SIZE)
        dataset = build_dataset(str(source), size, channels=channels, flip=False)
        if not 0 <= index < len(dataset):
            raise UserError(f"--index {index} is outside the dataset '{source}' (0..{len(dataset) - 1})")
        item = dataset[index]
        if item is None:
            raise UserError(f"item {index} of '{source}' is an unreadable image: pick another --index")
        return item[0].unsqueeze(0)
    return _load_file(path, image_size or DEFAULT_FILE_SIZE, channels)


def _load_file(path: Path, size: int, channels: int | None) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    from ditlab.data.transforms import center_crop_arr, to_mode, uint8_to_tensor

    if not path.exists():
        raise UserError(f"'{path}' is neither an image file, an image folder nor a built-in dataset (mnist, digits): "
                        "check the path")
    try:
        with Image.open(path) as image:
            image.load()
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            image = to_mode(image, channels or (1 if gray else 3))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read '{path}' as an image ({type(err).__name__}): pass a PNG or JPEG file, a "
                        "folder of images or mnist / digits") from None
    return uint8_to_tensor(center_crop_arr(image, size)).unsqueeze(0)


def _show(ax, image: torch.Tensor, title: str = "", **kw: Any) -> None:
    """Draw a (C, H, W) tensor in [-1, 1] (grayscale for one channel) without axes."""
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[-1] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest", **kw)
    else:
        ax.imshow(arr, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def signal_and_noise(process, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) of x_t = alpha_t x0 + sigma_t eps, read from ``process.q_sample`` itself."""
    ones = torch.ones(len(t), 1, dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    alpha = process.q_sample(ones, t, zeros).reshape(-1).double()
    sigma = process.q_sample(zeros, t, ones).reshape(-1).double()
    return alpha, sigma


def format_snr(alpha: float, sigma: float) -> str:
    """'SNR 0.25 (-6.0 dB)'; 'SNR inf' at clean data, 'SNR 0' at pure noise."""
    if sigma <= 0:
        return "SNR inf"
    snr = alpha**2 / sigma**2
    if snr <= 0:
        return "SNR 0"
    return f"SNR {snr:.3g} ({10 * math.log10(snr):+.1f} dB)"


def noising_figure(image: torch.Tensor, fractions: Sequence[float], *, schedule: str = "linear",
                   num_timesteps: int = 1000, shift: float = 1.0, seed: int = 0):
    """DDPM (top) and rectified flow (bottom) at ``fractions`` of the way from data (0) to noise (1).

    DDPM's fraction f is step round(f (T - 1)) of its ``schedule``; flow's is time f (after SD3's ``shift``).
    Returns the matplotlib figure.
    """
    from ditlab.diffusion import create_process
    from ditlab.diffusion.flow import shift_time

    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise UserError(f"--at takes fractions in [0, 1] (0 = data, 1 = noise), got {f}")
    x0 = image[:1].float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    ddpm = create_process("ddpm", schedule=schedule, num_timesteps=num_timesteps, learn_sigma=False)
    flow = create_process("flow", shift=shift)
    ddpm_steps = torch.tensor([round(f * (num_timesteps - 1)) for f in fractions]).long()
    flow_times = shift_time(torch.tensor(list(fractions), dtype=torch.float64), shift).float()
    rows = [
        (f"DDPM ({schedule})", ddpm, ddpm_steps, lambda t: f"step {int(t)}"),
        ("rectified flow" + (f" (shift {shift:g})" if shift != 1 else ""), flow, flow_times,
         lambda t: f"t = {float(t):.2f}"),
    ]
    k = len(fractions)
    fig, axes = _figure(1.45 * k + 0.9, 4.0, 2, k)
    for r, (name, process, times, label) in enumerate(rows):
        alpha, sigma = signal_and_noise(process, times)
        for j, t in enumerate(times):
            x_t = process.q_sample(x0, t.reshape(1), noise)
            ax = axes[r, j]
            _show(ax, x_t[0], label(t))
            ax.set_xlabel(format_snr(float(alpha[j]), float(sigma[j])), fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("forward process x_t = alpha_t x0 + sigma_t eps (same eps in both rows)", fontsize=9)
    fig.tight_layout()
    return fig


def patches_figure(image: torch.Tensor, autoencoder, patch_sizes: Sequence[int] = (2, 4, 8), *, max_channels: int = 8):
    """The image, its latent channels (``autoencoder.encode``), and the patch grid of each patch size with its
    token count (H/p x W/p tokens on an H x W latent). Returns the matplotlib figure."""
    with torch.no_grad():
        latents = autoencoder.encode(image[:1].float())[0]  # (c, h, w)
    c, h, w = latents.shape
    d = image.shape[-1] // w  # pixels per latent cell
    shown = min(c, max_channels)
    cols = max(1 + shown, len(patch_sizes))
    fig, axes = _figure(1.8 * cols, 4.2, 2, cols)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], image[0], f"image {image.shape[-2]}x{image.shape[-1]}")
    axes[0, 0].axis("on")
    lim = float(latents.abs().max()) or 1.0
    for i in range(shown):
        ax = axes[0, 1 + i]
        ax.imshow(latents[i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"latent ch {i} ({h}x{w})", fontsize=8)
    for j, p in enumerate(patch_sizes):
        ax = axes[1, j]
        _show(ax, image[0])
        ax.axis("on")
        if h % p or w % p:
            ax.set_title(f"p={p}: does not divide {h}x{w}", fontsize=8)
            continue
        for k in range(0, w + 1, p):  # patch borders, in pixels: p latent cells = p * d pixels
            ax.axvline(k * d - 0.5, color="#f03e3e", lw=0.8)
        for k in range(0, h + 1, p):
            ax.axhline(k * d - 0.5, color="#f03e3e", lw=0.8)
        tokens = (h // p) * (w // p)
        ax.set_title(f"p={p}: {tokens} token{'s' if tokens != 1 else ''}", fontsize=8)
        ax.set_xlabel(f"each {p}x{p}x{c} -> 1 token", fontsize=7)
    fig.suptitle(f"patches as tokens: a {c}x{h}x{w} latent ({autoencoder.identity()})", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure atomically (PNG, or whatever the suffix says)."""
    from ditlab.files import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi), durable=False)


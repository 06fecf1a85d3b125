"""Token positions for any grid: 2-D sin-cos tables (with PixArt's and SD3's coordinate rules) and 2-D RoPE.

Every backbone computes the positions of the grid it is given, so one network takes any resolution and
aspect ratio. The coordinate of token ``i`` (of ``n``) along one axis is, in float32 as the published code
computes it:

- ``i / scale`` by default (DiT: ``scale = 1``, plain grid indices);
- ``i / (n / base) / scale`` with a base size (PixArt-α's interpolation: every grid spans the range of
  the ``base``-token training grid, ``scale`` its "interpolation scale");
- ``(top + i) / (max_size / base) / scale`` with ``top = (max_size - n) // 2`` with a maximum size (SD3: a
  ``max_size``² table cropped at its centre, so a grid's centre keeps its coordinates at every size).

2-D sin-cos (MAE / DiT): the first half of the channels embeds the column coordinate, the second half the
row, each as [sin | cos] of ``coord * 10000^(-k / (dim/4))``.
2-D RoPE (Su et al. 2021, extended to 2-D as in Lumina-Next, Flux and Hunyuan-DiT): the first half of each
head's channels rotates by the column coordinate, the second half by the row, channel pairs (2k, 2k+1)
by the angle ``coord * theta^(-2k / (head_dim/2))``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ditlab.models.layers import apply_rope, sincos_1d

if TYPE_CHECKING:
    from ditlab.models.config import DiTConfig

__all__ = ["apply_rope", "axis_coords", "grid_coords", "grid_rope", "grid_sincos", "rope_2d", "rope_pad",
           "sincos_2d_at"]

ROPE_THETA = 10000.0


def axis_coords(n: int, *, scale: float = 1.0, base: int = 0, max_size: int = 0) -> Tensor:
    """Coordinates (n,) float32 of ``n`` tokens along one axis (rules in the module docstring)."""
    if max_size:
        if n > max_size:
            raise ValueError(f"a grid side of {n} tokens exceeds the position table's {max_size}")
        top = (max_size - n) // 2
        table = torch.arange(max_size, dtype=torch.float32) / (max_size / (base or max_size)) / scale
        return table[top:top + n]
    if base:
        return torch.arange(n, dtype=torch.float32) / (n / base) / scale
    return torch.arange(n, dtype=torch.float32) / scale


def grid_coords(grid_h: int, grid_w: int, *, scale: float = 1.0, base: int = 0,
                max_size: int = 0) -> tuple[Tensor, Tensor]:
    """Row and column coordinates (T,), T = grid_h * grid_w, of the tokens in row-major order."""
    rows = axis_coords(grid_h, scale=scale, base=base, max_size=max_size)
    cols = axis_coords(grid_w, scale=scale, base=base, max_size=max_size)
    return rows.repeat_interleave(grid_w), cols.repeat(grid_h)  # (T,), (T,)


def sincos_2d_at(dim: int, rows: Tensor, cols: Tensor) -> Tensor:
    """2-D sin-cos embedding (T, dim) float32 of tokens at (rows, cols); equals ``sincos_2d`` on integer grids."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()  # (T, dim)


def rope_2d(head_dim: int, rows: Tensor, cols: Tensor, theta: float = ROPE_THETA) -> tuple[Tensor, Tensor]:
    """cos and sin (T, head_dim/2) float32 of the 2-D rotary angles of tokens at (rows, cols)."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (head_dim/4,)
    angles = torch.cat([cols.double()[:, None] * freqs, rows.double()[:, None] * freqs], dim=1)  # (T, head_dim/2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_pad(rope: tuple[Tensor, Tensor], before: int = 0, after: int = 0) -> tuple[Tensor, Tensor]:
    """The rotation of a sequence with ``before``/``after`` extra tokens (condition tokens) left unrotated."""
    cos, sin = rope
    one = torch.ones(1, cos.shape[1], dtype=cos.dtype, device=cos.device)
    cos = torch.cat([one.expand(before, -1), cos, one.expand(after, -1)])
    sin = torch.cat([torch.zeros_like(one).expand(before, -1), sin, torch.zeros_like(one).expand(after, -1)])
    return cos, sin  # (before + T + after, head_dim/2) each


def _coords(config: DiTConfig, grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    return grid_coords(grid_h, grid_w, scale=config.pos_scale, base=config.pos_base_size,
                       max_size=config.pos_max_size)


def grid_sincos(config: DiTConfig, grid_h: int, grid_w: int) -> Tensor:
    """The 2-D sin-cos positions (T, hidden_size) of a grid_h x grid_w token grid under ``config``'s rules."""
    return sincos_2d_at(config.hidden_size, *_coords(config, grid_h, grid_w))


def grid_rope(config: DiTConfig, grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    """The 2-D RoPE (cos, sin), each (T, head_dim/2), of a grid_h x grid_w token grid under ``config``'s rules."""
    return rope_2d(config.hidden_size // config.num_heads, *_coords(config, grid_h, grid_w))

"""What every patch-token backbone (DiT, its video form, MMDiT, U-ViT) shares: the token grid of an input, its
sin-cos positions at any grid size, and the gradient-checkpointing switch."""
from __future__ import annotations

from torch import Tensor, nn

from ditlab.models.config import DiTConfig
from ditlab.models.positions import grid_sincos


class TokenGridModel(nn.Module):
    """Base of the backbones: subclasses set ``config``, ``patch_size``, ``grad_checkpointing`` and the
    ``pos_embed`` buffer (the sin-cos table of ``config.grid_size``) in their ``__init__``."""

    config: DiTConfig
    patch_size: int
    pos_embed: Tensor

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        """Tokens per column and row of an h x w latent; ValueError when the patch size does not divide it."""
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {p}")
        return h // p, w // p

    def _positions(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        """The sin-cos positions (1, T, D) of a grid_h x grid_w grid in ``like``'s dtype and device: the stored
        table for the default grid, the closed form for any other (a shape-only branch, traceable)."""
        if (grid_h, grid_w) == self.config.grid_size:
            return self.pos_embed.to(like.dtype)
        return grid_sincos(self.config, grid_h, grid_w).to(like)[None]

    def set_grad_checkpointing(self, enabled: bool | int = True) -> None:
        """Recompute blocks in the backward pass (less activation memory, same numbers): True or -1 for
        every block, N > 0 for the first N only (memory and time trade in steps of one block), False or 0
        for none."""
        self.grad_checkpointing = enabled
        self.config.grad_checkpointing = enabled

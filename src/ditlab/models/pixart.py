"""PixArt-α's block (Chen et al., 2023, §2.3 and Fig. 4): adaLN-single and cross-attention to text.

adaLN-single: instead of every block regressing its own shift/scale/gate from c (adaLN-Zero, 27% of
DiT-XL's parameters), ONE shared MLP of the backbone maps the time embedding to the six modulation
vectors ``t0`` (N, 6D), and each block adds its own learned table E (6, D):
``[shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = E + t0``. The backbone builds that
shared MLP because the block declares ``shared_modulation = 6``.

Between self-attention and the MLP, the image tokens attend to the text tokens (padding masked). Its
output projection starts at zero, so a fresh block ignores the text and text conditioning grows in
during training; the final layer is modulated by its own table plus the time embedding
(``final_table``). A pooled prompt vector, when the model has one, is added to the time embedding
before the shared MLP (the SD3 / Lumina pattern), so it reaches every modulation.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ditlab.models import fused
from ditlab.models.blocks import Block
from ditlab.models.layers import Attention, Mlp


class PixArtBlock(Block):
    """adaLN-single self-attention + masked cross-attention to the text + MLP (PixArt-α).

    ``forward(x, mod, context, context_mask)``: ``mod`` (N, 6D) is the shared modulation ``t0``,
    ``context`` (N, L, D) the embedded text tokens with ``context_mask`` (N, L) True = a real token.
    """

    uses_tokens = True
    requires_text = True
    shared_modulation: ClassVar[int] = 6
    final_table: ClassVar[bool] = True

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.cross_attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        # E: this block's own offsets of the six modulation vectors (PixArt: randn / sqrt(D))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def init_weights(self) -> None:
        with torch.no_grad():
            self.scale_shift_table.normal_(0.0, self.scale_shift_table.shape[1] ** -0.5)
        # the text path starts closed: a fresh block is the unconditional one
        nn.init.zeros_(self.cross_attn.proj.weight)
        nn.init.zeros_(self.cross_attn.proj.bias)

    def forward(self, x: Tensor, mod: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if context is None:
            raise ValueError("a PixArt block needs the text tokens (context)")
        n, d = x.shape[0], x.shape[2]
        # 6 x (N, D): the shared t0 (N, 6D) plus this block's table (6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            (self.scale_shift_table[None] + mod.reshape(n, 6, d)).unbind(dim=1)
        )
        # x + gate * f(norm(x) * (1 + scale) + shift), fused GPU kernels when enabled (models/fused.py)
        h = self.attn(fused.modulated_layer_norm(x, self.norm1, shift_msa, scale_msa), rope=rope)
        x = fused.gated_residual(x, gate_msa, h)
        x = x + self.cross_attn(x, context, context_mask)  # (N, T, D): image tokens read the text (no RoPE)
        h = self.mlp(fused.modulated_layer_norm(x, self.norm2, shift_mlp, scale_mlp))
        x = fused.gated_residual(x, gate_mlp, h)
        return x  # (N, T, D)


class SharedModulation(nn.Module):
    """adaLN-single's one MLP for all blocks: c (N, D) -> SiLU -> Linear -> t0 (N, k*D)."""

    def __init__(self, hidden_size: int, k: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, k * hidden_size)

    def init_weights(self) -> None:
        nn.init.normal_(self.linear.weight, std=0.02)  # PixArt's t_block init
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> Tensor:
        return self.linear(nn.functional.silu(c))  # (N, k*D)


"""The four DiT block designs of the paper's ablation (Peebles & Xie, 2023, §3.2, Fig. 5).

Every block has the same call signature ``block(x, c, context, context_mask)``:
``x`` (N, T, D) image tokens, ``c`` (N, D) the summed timestep + condition embedding, ``context``
(N, L, D) condition tokens with ``context_mask`` (N, L) True = valid; the keyword ``rope`` (cos, sin) rotates
self-attention when the model uses 2-D RoPE positions.
Each block kind *declares* what it consumes (class attributes of ``Block``), and the backbone
reads the declarations; it never switches on block names.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ditlab.models import fused
from ditlab.models.layers import Attention, Mlp


class Block(nn.Module):
    """Base of the block kinds: what a kind consumes and how the backbone's final layer pairs with it.

    Attributes:
        uses_tokens: the block attends to the condition tokens passed as ``context``.
        prefix_tokens: the condition tokens are prepended to the image tokens before the first block
            and removed after the last (in-context conditioning).
        requires_text: the kind only makes sense with text tokens (a model without ``context_dim`` is refused).
        adaptive_final: the final layer norm is modulated by ``c`` (the adaLN designs).
        zero_final_modulation: that modulation starts at zero (adaLN-Zero).
        shared_modulation: k > 0: the backbone maps c through ONE shared SiLU-Linear to k*D modulation
            values and passes those to every block instead of c (adaLN-single, PixArt-α).
        final_table: the final layer's shift and scale are a learned (2, D) table plus c (PixArt-α).
    """

    uses_tokens: ClassVar[bool] = False
    prefix_tokens: ClassVar[bool] = False
    requires_text: ClassVar[bool] = False
    adaptive_final: ClassVar[bool] = False
    zero_final_modulation: ClassVar[bool] = False
    shared_modulation: ClassVar[int] = 0
    final_table: ClassVar[bool] = False

    def init_weights(self) -> None:
        """Kind-specific initialisation after the backbone's Xavier init (default: none)."""


class AdaLNZeroBlock(Block):
    """adaLN-Zero: regress shift, scale and a residual gate alpha for attention and MLP from c.

    The regression layer starts at zero, so alpha = 0 and every block is the identity at init.
    """

    adaptive_final = True
    zero_final_modulation = True

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def init_weights(self) -> None:
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # 6 x (N, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).chunk(6, dim=1)
        )
        # context_mask: the key mask of x itself when condition tokens ride along (in-context kinds), else None;
        # x + gate * f(norm(x) * (1 + scale) + shift), fused GPU kernels when enabled (models/fused.py)
        h = self.attn(fused.modulated_layer_norm(x, self.norm1, shift_msa, scale_msa), None, context_mask, rope=rope)
        x = fused.gated_residual(x, gate_msa, h)
        h = self.mlp(fused.modulated_layer_norm(x, self.norm2, shift_mlp, scale_mlp))
        x = fused.gated_residual(x, gate_mlp, h)
        return x  # (N, T, D)


class AdaLNBlock(Block):
    """adaLN: layer norms whose shift and scale are regressed from c (no gate, normal init)."""

    adaptive_final = True

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 4 * hidden_size))

    # no init_weights: keeping the backbone's Xavier init is what separates adaLN from adaLN-Zero

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
        x = x + self.attn(fused.modulated_layer_norm(x, self.norm1, shift_msa, scale_msa), rope=rope)
        x = x + self.mlp(fused.modulated_layer_norm(x, self.norm2, shift_mlp, scale_mlp))
        return x  # (N, T, D)


class CrossAttentionBlock(Block):
    """Cross-attention: a ViT block with a multi-head cross-attention layer after self-attention.

    The image tokens attend to ``context``: for class conditioning the length-2 sequence
    [t embedding, label embedding]; any other token sequence (e.g. text) with a padding mask works.
    """

    uses_tokens = True

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if context is None:
            raise ValueError("a cross-attention block needs condition tokens (context)")
        x = x + self.attn(self.norm1(x), rope=rope)
        x = x + self.cross_attn(self.norm_cross(x), context, context_mask)  # (N, T, D)
        x = x + self.mlp(self.norm2(x))
        return x


class InContextBlock(Block):
    """In-context conditioning: a plain ViT block; the condition tokens ride along as extra tokens in x."""

    prefix_tokens = True

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # context_mask here is the key mask of x itself (N, K + T): padding condition tokens are ignored
        x = x + self.attn(self.norm1(x), None, context_mask, rope=rope)
        x = x + self.mlp(self.norm2(x))
        return x  # (N, K + T, D)


class AdaLNZeroInContextBlock(AdaLNZeroBlock):
    """adaLN-Zero with the condition tokens (text, or [t, label]) riding along in x: the in-context design of
    the text-to-image comparisons (text tokens appended to the image tokens of an adaLN-Zero DiT), t and the
    pooled prompt still modulating every block through c. Padding condition tokens are masked as keys."""

    prefix_tokens = True


from ditlab.models.pixart import PixArtBlock  # noqa: E402  (it subclasses Block, defined above)

BLOCK_KINDS: dict[str, type[Block]] = {
    "adaLN-Zero": AdaLNZeroBlock,
    "adaLN": AdaLNBlock,
    "adaLN-Zero-in-context": AdaLNZeroInContextBlock,
    "cross-attention": CrossAttentionBlock,
    "in-context": InContextBlock,
    "pixart": PixArtBlock,  # adaLN-single + cross-attention to text (PixArt-α)
}
BLOCK_TYPES = tuple(BLOCK_KINDS)


class FinalLayer(nn.Module):
    """Layer norm (adaptive for the adaLN designs) and a linear decoder to p*p*out_channels.

    The linear decoder starts at zero in every design, so a fresh model predicts zeros; with
    adaLN-Zero the final modulation starts at zero too, as in the paper. ``table``: shift and scale are
    a learned (2, D) table plus c (PixArt-α's final layer).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, adaptive: bool,
                 zero_modulation: bool, table: bool = False):
        super().__init__()
        self.adaptive = adaptive
        self.zero_modulation = zero_modulation
        self.table = table
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=not (adaptive or table), eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        if adaptive:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        if table:
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def init_weights(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        if self.adaptive and self.zero_modulation:
            nn.init.zeros_(self.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if self.table:
            shift, scale = (self.scale_shift_table[None] + c[:, None]).unbind(dim=1)  # 2 x (N, D)
            x = fused.modulated_layer_norm(x, self.norm_final, shift, scale)
        elif self.adaptive:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
            x = fused.modulated_layer_norm(x, self.norm_final, shift, scale)
        else:
            x = self.norm_final(x)
        return self.linear(x)  # (N, T, p*p*C_out)

"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models", §3, Fig. 1).

Everything is a token: the time, the class label or the text tokens ride along with the image patches
through plain pre-norm transformer blocks (no adaLN). Long skip connections join the first and the second
half like a U-Net's: block i of the second half first maps the concatenation [x, output of block n-1-i of
the first half] back to the width with a linear layer (§3.1, "concatenation + linear" was the best of the
paper's ablations). A final 3x3 convolution on the unpatchified output is optional (§3.1).

Departures from the reference code, both so that one network takes any resolution: positions are the
fixed 2-D sin-cos (or RoPE) of ``ditlab.models.positions`` for the image tokens, not a learned table over
a fixed sequence (the condition tokens carry none), and the patch order is the conv's (p, p, C)-per-token
decoder layout shared with DiT. The time token is the sinusoid of t itself at the model width, as in
every configuration of the paper (``mlp_time_embed=False``). Parameter counts equal the paper's Table 2
(``tests/models/test_uvit.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ditlab.models.config import DiTConfig, checkpointed_count
from ditlab.models.designs import register_design
from ditlab.models.layers import (
    Attention,
    ConditionMlp,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    timestep_embedding,
    with_null_token,
)
from ditlab.models.mmdit import unpatchify
from ditlab.models.positions import grid_rope, grid_sincos, rope_pad
from ditlab.models.token_grid import TokenGridModel


class UViTBlock(nn.Module):
    """Pre-norm ViT block; with ``skip``, a linear layer first fuses x with a long-skip input (N, K+T, 2D) -> D."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool, qkv_bias: bool,
                 skip: bool = False):
        super().__init__()
        d = hidden_size
        self.skip_linear = nn.Linear(2 * d, d) if skip else None
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, num_heads, qk_norm=qk_norm, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = Mlp(d, int(d * mlp_ratio))

    def forward(self, x: Tensor, skip: Tensor | None = None, mask: Tensor | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (N, K+T, 2D) -> (N, K+T, D)
        x = x + self.attn(self.norm1(x), None, mask, rope=rope)  # mask: padding text tokens as keys
        return x + self.mlp(self.norm2(x))  # (N, K+T, D)


@register_design("u-vit")
class UViT(TokenGridModel):
    """U-ViT. ``model(x, t, y=None | context=, context_mask=, pooled=) -> (N, out_channels, H, W)``.

    ``config.depth`` counts all blocks: depth // 2 in each half, plus a middle block when it is odd
    (the paper's 13 layers of U-ViT-S are 6 + 1 + 6). Condition tokens: [time, label] or [time, text...];
    a pooled prompt vector, when given, is added to the time token.
    """

    requires_text = False
    takes_labels = True
    own_options = frozenset({"qkv_bias", "final_conv"})

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.in_channels, self.out_channels = config.in_channels, config.out_channels
        self.learn_sigma, self.num_classes = config.learn_sigma, config.num_classes
        self.null_class = config.num_classes
        self.patch_size = p
        self.grad_checkpointing = config.grad_checkpointing
        self.x_embedder = PatchEmbed(p, config.in_channels, d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_factors) if config.num_classes else None
        self.context_embedder = nn.Linear(config.context_dim, d) if config.context_dim else None
        # the "learned" null condition: a row without text tokens reads this token (PixArt's y_embedding)
        self.null_token = nn.Parameter(torch.zeros(1, d)) if config.context_dim and config.learned_null else None
        self.pooled_embedder = ConditionMlp(config.pooled_dim, d, "silu") if config.pooled_dim else None
        self.register_buffer("pos_embed", grid_sincos(config, *config.grid_size).unsqueeze(0), persistent=False)
        half = config.depth // 2
        args = (d, config.num_heads, config.mlp_ratio, config.qk_norm, config.qkv_bias)
        self.in_blocks = nn.ModuleList(UViTBlock(*args) for _ in range(half))
        self.mid_block = UViTBlock(*args) if config.depth % 2 else None
        self.out_blocks = nn.ModuleList(UViTBlock(*args, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, p * p * self.out_channels)
        self.final_conv = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if config.final_conv else None
        self.initialize_weights()

    @property
    def blocks(self) -> list[UViTBlock]:
        """Every block in order (first half, middle, second half): the units FSDP shards one by one."""
        return [*self.in_blocks, *([self.mid_block] if self.mid_block is not None else []), *self.out_blocks]

    def initialize_weights(self) -> None:
        """The reference init: truncated N(0, 0.02) linears with zero biases, unit layer norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.null_token is not None:
            nn.init.trunc_normal_(self.null_token, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(grid_sincos(self.config, *self.config.grid_size).unsqueeze(0))

    def condition_tokens(self, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                         context_mask: Tensor | None = None, pooled: Tensor | None = None,
                         ) -> tuple[Tensor, Tensor | None]:
        """The condition tokens (N, K, D) that lead the sequence, and their key mask (N, K) (None = all valid)."""
        n = t.shape[0]
        dtype = self.decoder_pred.weight.dtype
        time = timestep_embedding(t * self.config.timestep_scale, self.config.hidden_size).to(dtype)  # (N, D)
        if self.pooled_embedder is not None:
            if pooled is None:
                raise ValueError("this text model needs the pooled prompt vector (pooled=...)")
            time = time + self.pooled_embedder(pooled)
        tokens = [time[:, None]]
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((n,), self.null_class, dtype=torch.long, device=t.device)
            tokens.append(self.y_embedder(y)[:, None])  # (N, 1, D)
        mask = None
        if self.context_embedder is not None:
            if context is None:
                raise ValueError("this text model needs the prompt's token features (context=..., context_mask=...)")
            text, text_mask = with_null_token(self.context_embedder(context.to(dtype)), context_mask,
                                              self.null_token)  # (N, L, D), (N, L)
            tokens.append(text)
            if text_mask is not None:
                lead = torch.ones(n, len(tokens) - 1, dtype=torch.bool, device=text_mask.device)
                mask = torch.cat([lead, text_mask], dim=1)  # (N, K)
        return torch.cat(tokens, dim=1), mask  # (N, K, D)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, pooled: Tensor | None = None) -> Tensor:
        gh, gw = self.token_grid(*x.shape[-2:])
        x = self.x_embedder(x)  # (N, T, D)
        tokens, mask = self.condition_tokens(t, y, context, context_mask, pooled)  # (N, K, D), (N, K)
        k = tokens.shape[1]
        rope = None
        if self.config.pos_embed == "rope":
            rope = rope_pad(tuple(r.to(x.device) for r in grid_rope(self.config, gh, gw)), before=k)
        else:
            x = x + self._positions(gh, gw, x)
        x = torch.cat([tokens, x], dim=1)  # (N, K + T, D)
        if mask is not None:
            mask = torch.cat([mask, torch.ones(x.shape[0], gh * gw, dtype=torch.bool, device=mask.device)], dim=1)

        depth = len(self.in_blocks) + len(self.out_blocks) + (self.mid_block is not None)
        recompute = checkpointed_count(self.grad_checkpointing, depth) if torch.is_grad_enabled() else 0
        done = [0]  # blocks run so far, in order: the first `recompute` are recomputed in the backward pass

        def run(blk: UViTBlock, x: Tensor, skip: Tensor | None) -> Tensor:
            done[0] += 1
            if done[0] <= recompute:
                return checkpoint(blk, x, skip, mask, rope, use_reentrant=False)
            return blk(x, skip, mask, rope)

        skips = []
        for blk in self.in_blocks:
            x = run(blk, x, None)
            skips.append(x)
        if self.mid_block is not None:
            x = run(self.mid_block, x, None)
        for blk in self.out_blocks:
            x = run(blk, x, skips.pop())  # the innermost first-half output meets the first second-half block
        x = self.decoder_pred(self.norm(x))[:, k:]  # (N, T, p*p*C_out): the condition tokens leave
        x = unpatchify(x, gh, gw, self.patch_size, self.out_channels)  # (N, C_out, H, W)
        return self.final_conv(x) if self.final_conv is not None else x

    def extra_repr(self) -> str:
        cfg = self.config
        cond = f"text={cfg.context_dim}" if cfg.context_dim else f"classes={cfg.num_classes}"
        return f"{cfg.name}, block=u-vit, input_size={cfg.input_size}, {cond}"

"""MMDiT, the multimodal diffusion transformer of Stable Diffusion 3 (Esser et al. 2024, §4, Fig. 2).

Text tokens and image tokens are two streams with weights of their own (layer norms, adaLN modulation,
q/k/v and output projections, MLP) that meet in one joint attention over the concatenated sequence
[image; text]. Both streams are modulated adaLN-Zero style by c = time embedding + pooled text embedding;
the last block's text stream is "pre-only" (it supplies keys and values but is not updated, since nothing
reads it afterwards). Queries and keys may be RMS-normalised per stream (SD3's QK-norm, §5.3.2).

Built by ``create_model(..., block="mmdit")`` (e.g. ``MMDiT-S/2``, ``SD3-medium``); the same keyword tensors
as DiT: ``context`` (N, L, context_dim), ``context_mask`` (N, L) True = a real token, ``pooled``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ditlab.models.blocks import FinalLayer
from ditlab.models.config import DiTConfig, checkpointed_count
from ditlab.models.designs import register_design
from ditlab.models.layers import (
    Attention,
    ConditionMlp,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    apply_rope,
    modulate,
    with_null_token,
)
from ditlab.models.positions import grid_rope, grid_sincos
from ditlab.models.token_grid import TokenGridModel


def unpatchify(x: Tensor, grid_h: int, grid_w: int, patch: int, channels: int) -> Tensor:
    """(N, T, p*p*C) -> (N, C, grid_h*p, grid_w*p), the inverse of the patch embedding's token order."""
    n = x.shape[0]
    x = x.reshape(n, grid_h, grid_w, patch, patch, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, grid_h * patch, grid_w * patch)


def _heads(attn: Attention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised per-head q, k and v (N, H, T, d) of x through one stream's fused projection."""
    q, k, v = (attn._heads(z) for z in attn.qkv(x).chunk(3, dim=-1))
    return attn.q_norm(q), attn.k_norm(k), v


def joint_attention(attn_x: Attention, attn_c: Attention, x: Tensor, ctx: Tensor, ctx_mask: Tensor | None = None,
                    rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Attention over the concatenation [x; ctx], each stream through its own projections.

    Equal to one multi-head attention over the joint sequence whose q/k/v rows come from the stream of each
    token; padding text tokens (``ctx_mask`` False) are ignored as keys. ``rope`` rotates the image tokens
    only (text tokens carry no position). Returns the two streams' outputs (N, T, D) and (N, L, D).
    """
    n, t, d = x.shape
    qx, kx, vx = _heads(attn_x, x)  # (N, H, T, d) each
    qc, kc, vc = _heads(attn_c, ctx)  # (N, H, L, d) each
    if rope is not None:
        qx, kx = apply_rope(qx, rope), apply_rope(kx, rope)
    q, k, v = torch.cat([qx, qc], dim=2), torch.cat([kx, kc], dim=2), torch.cat([vx, vc], dim=2)  # (N, H, T+L, d)
    mask = None
    if ctx_mask is not None:  # image keys are always valid, so no query sees only padding
        mask = torch.cat([torch.ones(n, t, dtype=torch.bool, device=x.device), ctx_mask.bool()], dim=1)
        mask = mask[:, None, None, :]  # (N, 1, 1, T+L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, T+L, d)
    out = out.transpose(1, 2).reshape(n, -1, d)  # (N, T+L, D)
    return attn_x.proj(out[:, :t]), attn_c.proj(out[:, t:])


class JointBlock(nn.Module):
    """One MMDiT block: two adaLN-Zero streams (image ``x``, text ``context``) sharing one joint attention.

    With ``pre_only`` the text stream only feeds keys and values (SD3's last block): its modulation regresses
    (shift, scale) for one layer norm, it has no output projection, no MLP, and the block returns no text.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool, pre_only: bool = False):
        super().__init__()
        d = hidden_size
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, int(d * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.context_norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.context_attn = Attention(d, num_heads, qk_norm=qk_norm)
        if pre_only:
            self.context_attn.proj = nn.Identity()  # the text output is never read
            self.context_adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        else:
            self.context_norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
            self.context_mlp = Mlp(d, int(d * mlp_ratio))
            self.context_adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def init_weights(self) -> None:
        """adaLN-Zero: both streams' modulations start at zero, so the block starts as the identity."""
        for mod in (self.adaLN_modulation, self.context_adaLN_modulation):
            nn.init.zeros_(mod[-1].weight)
            nn.init.zeros_(mod[-1].bias)

    def forward(self, x: Tensor, context: Tensor, c: Tensor, context_mask: Tensor | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (N, T, D)
        if self.pre_only:
            c_shift, c_scale = self.context_adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
            hc = modulate(self.context_norm1(context), c_shift, c_scale)  # (N, L, D)
        else:
            (c_shift_msa, c_scale_msa, c_gate_msa,
             c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.context_adaLN_modulation(c).chunk(6, dim=1)
            hc = modulate(self.context_norm1(context), c_shift_msa, c_scale_msa)  # (N, L, D)
        attn_x, attn_c = joint_attention(self.attn, self.context_attn, h, hc, context_mask, rope)
        x = x + gate_msa.unsqueeze(1) * attn_x
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)
        if self.pre_only:
            return x, None
        context = context + c_gate_msa.unsqueeze(1) * attn_c
        context = context + c_gate_mlp.unsqueeze(1) * self.context_mlp(
            modulate(self.context_norm2(context), c_shift_mlp, c_scale_mlp))  # (N, L, D)
        return x, context


@register_design("mmdit")
class MMDiT(TokenGridModel):
    """SD3's MMDiT. ``model(x, t, context=, context_mask=, pooled=) -> (N, out_channels, H, W)``.

    Args of forward:
        x: (N, C, H, W) latents; H, W divisible by the patch size.
        t: (N,) float times (multiplied by ``config.timestep_scale``: 1000 for SD3's flow time in [0, 1]).
        context: (N, L, context_dim) text token features, projected by one linear layer (SD3's context_embedder).
        context_mask: (N, L) bool, True = a real token (None: every token is attended to, as SD3 does).
        pooled: (N, pooled_dim) pooled prompt vector, added to the time embedding (when pooled_dim > 0).
    """

    requires_text = True  # declared like a DiT block kind: what the design consumes
    takes_labels = False
    own_options: frozenset[str] = frozenset()

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.in_channels, self.out_channels = config.in_channels, config.out_channels
        self.learn_sigma, self.num_classes, self.null_class = config.learn_sigma, 0, 0
        self.patch_size = p
        self.grad_checkpointing = config.grad_checkpointing
        self.x_embedder = PatchEmbed(p, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, config.frequency_embedding_size, config.timestep_scale,
                                           config.timestep_freq_shift)
        self.pooled_embedder = ConditionMlp(config.pooled_dim, d, "silu") if config.pooled_dim else None
        self.context_embedder = nn.Linear(config.context_dim, d)
        # the "learned" null condition: a row without text tokens reads this token (PixArt's y_embedding)
        self.null_token = nn.Parameter(torch.zeros(1, d)) if config.learned_null else None
        # fixed positions of the default grid (a buffer, not a parameter: SD3 keeps them out of its parameters)
        self.register_buffer("pos_embed", grid_sincos(config, *config.grid_size).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            JointBlock(d, config.num_heads, config.mlp_ratio, config.qk_norm, pre_only=i == config.depth - 1)
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(d, p, self.out_channels, adaptive=True, zero_modulation=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: Xavier-uniform linears, N(0, 0.02) time MLP, zero adaLN modulations and decoder."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.null_token is not None:
            nn.init.normal_(self.null_token, std=0.02)
        for block in self.blocks:
            block.init_weights()
        self.final_layer.init_weights()
        with torch.no_grad():
            self.pos_embed.copy_(grid_sincos(self.config, *self.config.grid_size).unsqueeze(0))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, pooled: Tensor | None = None) -> Tensor:
        if y is not None:
            raise ValueError("MMDiT is a text model: it takes context=..., not class labels")
        if context is None:
            raise ValueError("MMDiT needs the prompt's token features (context=..., context_mask=...)")
        gh, gw = self.token_grid(*x.shape[-2:])
        x = self.x_embedder(x)  # (N, T, D)
        rope = None
        if self.config.pos_embed == "rope":
            rope = tuple(r.to(x.device) for r in grid_rope(self.config, gh, gw))  # (T, d/2) x 2
        else:
            x = x + self._positions(gh, gw, x)
        c = self.t_embedder(t)  # (N, D)
        if self.pooled_embedder is not None:
            if pooled is None:
                raise ValueError("this text model needs the pooled prompt vector (pooled=...)")
            c = c + self.pooled_embedder(pooled)  # (N, D)
        ctx = self.context_embedder(context.to(self.context_embedder.weight.dtype))  # (N, L, D)
        ctx, mask = with_null_token(ctx, None if context_mask is None else context_mask.bool(), self.null_token)
        recompute = checkpointed_count(self.grad_checkpointing, len(self.blocks)) if torch.is_grad_enabled() else 0
        for i, blk in enumerate(self.blocks):
            if i < recompute:  # the first `recompute` blocks are recomputed in the backward pass
                x, ctx = checkpoint(blk, x, ctx, c, mask, rope, use_reentrant=False)
            else:
                x, ctx = blk(x, ctx, c, mask, rope)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return unpatchify(x, gh, gw, self.patch_size, self.out_channels)  # (N, C_out, H, W)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"{cfg.name}, block=mmdit, input_size={cfg.input_size}, text={cfg.context_dim}, pooled={cfg.pooled_dim}"

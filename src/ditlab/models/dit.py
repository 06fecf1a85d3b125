"""The Diffusion Transformer backbone (Peebles & Xie, 2023, §3).

patchify -> + fixed 2-D sin-cos positions -> N blocks conditioned on t (and y) -> final layer ->
unpatchify. One backbone serves DDPM (t = step index) and flow matching (t in [0, 1], scaled by
``timestep_scale``); the process decides what the output channels mean.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ditlab.models.blocks import BLOCKS, FinalLayer
from ditlab.models.config import DiTConfig
from ditlab.models.layers import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_2d


class DiT(nn.Module):
    """Diffusion Transformer. ``model(x, t, y=None) -> (N, out_channels, H, W)``.

    Args of forward:
        x: (N, C, H, W) latents; H, W divisible by the patch size.
        t: (N,) float timesteps (multiplied by ``config.timestep_scale`` before embedding).
        y: (N,) long labels in [0, num_classes] (num_classes = the null label), or None, which
           means the null label for a class-conditional model and is ignored when num_classes=0.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.learn_sigma = config.learn_sigma
        self.num_classes = config.num_classes
        self.null_class = config.num_classes  # the extra label row used for guidance
        self.patch_size = p
        self.grad_checkpointing = config.grad_checkpointing

        self.x_embedder = PatchEmbed(p, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(
            d, config.frequency_embedding_size, config.timestep_scale, config.timestep_freq_shift
        )
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
            if config.num_classes > 0 else None
        )
        # Fixed sin-cos positions, not learned. Kept as a frozen parameter (as in the paper's
        # reference layout) so parameter counts and checkpoint keys match the published ones.
        self.pos_embed = nn.Parameter(
            sincos_2d(d, *config.grid_size).unsqueeze(0), requires_grad=False
        )  # (1, T, D)
        block_cls = BLOCKS[config.block]
        self.blocks = nn.ModuleList(
            block_cls(d, config.num_heads, config.mlp_ratio, config.qk_norm) for _ in range(config.depth)
        )
        adaptive = config.block in ("adaLN-Zero", "adaLN")
        self.final_layer = FinalLayer(
            d, p, self.out_channels, adaptive=adaptive, zero_modulation=config.block == "adaLN-Zero"
        )
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """The paper's init: Xavier-uniform linears, N(0, 0.02) embedders, zeroed adaLN-Zero layers."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        # Patch embedding initialised like a linear layer on the flattened patch (as in MAE).
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            block.init_weights()
        self.final_layer.init_weights()
        with torch.no_grad():
            pos = sincos_2d(self.config.hidden_size, *self.config.grid_size).unsqueeze(0)
            self.pos_embed.copy_(pos.to(self.pos_embed.device))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (saves activation memory, same numbers)."""
        self.grad_checkpointing = enabled
        self.config.grad_checkpointing = enabled

    # ------------------------------------------------------------------ forward
    def unpatchify(self, x: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        n, p, c = x.shape[0], self.patch_size, self.out_channels
        x = x.reshape(n, grid_h, grid_w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, grid_h * p, grid_w * p)

    def _positions(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        if (grid_h, grid_w) == self.config.grid_size:
            return self.pos_embed.to(like.dtype)
        # Another resolution: the closed form for that grid (shape-only branch, traceable).
        return sincos_2d(self.config.hidden_size, grid_h, grid_w).to(like)[None]

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        n, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {p}")
        gh, gw = h // p, w // p
        x = self.x_embedder(x)  # (N, T, D)
        x = x + self._positions(gh, gw, x)
        c = self.t_embedder(t)  # (N, D)
        tokens = [c]
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((n,), self.null_class, dtype=torch.long, device=x.device)
            y_emb = self.y_embedder(y)  # (N, D)
            tokens.append(y_emb)
            c = c + y_emb
        context = None
        block = self.config.block
        if block == "cross-attention":
            context = torch.stack(tokens, dim=1)  # (N, K, D): K = 1 or 2 condition tokens
        elif block == "in-context":
            x = torch.cat([torch.stack(tokens, dim=1), x], dim=1)  # (N, K + T, D)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, c, context, None, use_reentrant=False)
            else:
                x = blk(x, c, context, None)
        if block == "in-context":
            x = x[:, len(tokens):]  # drop the condition tokens again: (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x, gh, gw)  # (N, C_out, H, W)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"{cfg.name}, block={cfg.block}, input_size={cfg.input_size}, classes={cfg.num_classes}"

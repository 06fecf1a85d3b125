"""The Diffusion Transformer backbone (Peebles & Xie, 2023, §3).

patchify -> + fixed 2-D sin-cos positions -> N blocks conditioned on t and the condition -> final
layer -> unpatchify. One backbone serves DDPM (t = step index) and flow matching (t in [0, 1], scaled
by ``timestep_scale``); the process decides what the output channels mean. The condition arrives as
keyword tensors (``y`` labels, or ``context``/``context_mask``/``pooled`` text features, or nothing);
each block kind declares what it consumes (``ditlab.models.blocks.Block``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ditlab.models.blocks import BLOCK_KINDS, FinalLayer
from ditlab.models.config import DiTConfig, checkpointed_count
from ditlab.models.layers import ConditionMlp, LabelEmbedder, PatchEmbed, TimestepEmbedder, with_null_token
from ditlab.models.pixart import SharedModulation
from ditlab.models.positions import grid_rope, grid_sincos, rope_pad
from ditlab.models.token_grid import TokenGridModel


class DiT(TokenGridModel):
    """Diffusion Transformer. ``model(x, t, **cond) -> (N, out_channels, H, W)``.

    Args of forward:
        x: (N, C, H, W) latents; H, W divisible by the patch size.
        t: (N,) float timesteps (multiplied by ``config.timestep_scale`` before embedding).
        y: (N,) long labels in [0, num_classes] (num_classes = the null label), or None, which
           means the null label for a class-conditional model and is ignored when num_classes=0.
        context: (N, L, context_dim) text token features (text models); context_mask (N, L) bool,
            True = a real token; pooled: (N, pooled_dim) pooled prompt vector, added to the time embedding.
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
        self.kind = BLOCK_KINDS[config.block]  # what the blocks consume, declared on the block class
        tokens = self.kind.uses_tokens or self.kind.prefix_tokens
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_factors) if config.num_classes > 0 else None
        # text token features only where the blocks read tokens; a pooled vector goes into c for any kind
        self.context_embedder = ConditionMlp(config.context_dim, d, "gelu") if config.context_dim and tokens else None
        self.pooled_embedder = ConditionMlp(config.pooled_dim, d, "silu") if config.pooled_dim else None
        # a row with no text token (the "learned" null condition) reads this token instead (PixArt's y_embedding)
        self.null_token = nn.Parameter(torch.zeros(1, d)) if self.context_embedder is not None and \
            config.learned_null else None
        # Fixed sin-cos positions, not learned. Kept as a frozen parameter (as in the paper's
        # reference layout) so parameter counts and checkpoint keys match the published ones.
        self.pos_embed = nn.Parameter(
            grid_sincos(config, *config.grid_size).unsqueeze(0), requires_grad=False
        )  # (1, T, D); not added when the positions are 2-D RoPE
        # adaLN-single: one shared regression of the blocks' modulations from c (the blocks declare k)
        k = self.kind.shared_modulation
        self.t_block = SharedModulation(d, k) if k else None
        self.blocks = nn.ModuleList(
            self.kind(d, config.num_heads, config.mlp_ratio, config.qk_norm) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(
            d, p, self.out_channels, adaptive=self.kind.adaptive_final,
            zero_modulation=self.kind.zero_final_modulation, table=self.kind.final_table,
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
            for table in self.y_embedder.tables():
                nn.init.normal_(table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.t_block is not None:
            self.t_block.init_weights()
        if self.null_token is not None:
            nn.init.normal_(self.null_token, std=0.02)
        for block in self.blocks:
            block.init_weights()
        self.final_layer.init_weights()
        with torch.no_grad():
            pos = grid_sincos(self.config, *self.config.grid_size).unsqueeze(0)
            self.pos_embed.copy_(pos.to(self.pos_embed.device))

    def checkpointed_blocks(self) -> int:
        """How many leading blocks ``forward`` recomputes in the backward pass."""
        return checkpointed_count(self.grad_checkpointing, len(self.blocks))

    def compile_blocks(self, **options) -> DiT:
        """``torch.compile`` every block in place (regional compilation); returns self.

        The blocks share their code, so one compiled graph (forward and backward) serves all of them:
        compiling takes a fraction of whole-model compilation, parameter names stay as they are
        (checkpoints unchanged), and the rest of the model runs eagerly. ``options`` go to
        ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).
        """
        for blk in self.blocks:
            blk.compile(**options)
        return self

    # ------------------------------------------------------------------ forward
    def unpatchify(self, x: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        n, p, c = x.shape[0], self.patch_size, self.out_channels
        x = x.reshape(n, grid_h, grid_w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, grid_h * p, grid_w * p)

    def embed_condition(
        self, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
        context_mask: Tensor | None = None, pooled: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The summed conditioning vector c (N, D) and, for block kinds that use them, the condition
        tokens (N, K, D) with their mask (N, K) bool (None = all valid)."""
        n = t.shape[0]
        c = self.t_embedder(t)  # (N, D)
        tokens = [c]
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((n,), self.null_class, dtype=torch.long, device=t.device)
            y_emb = self.y_embedder(y)  # (N, D)
            tokens.append(y_emb)
            c = c + y_emb
        if self.pooled_embedder is not None:
            if pooled is None:
                raise ValueError("this text model needs the pooled prompt vector (pooled=...)")
            c = c + self.pooled_embedder(pooled)  # (N, D)
        if not (self.kind.uses_tokens or self.kind.prefix_tokens):
            return c, None, None
        if self.context_embedder is None:
            return c, torch.stack(tokens, dim=1), None  # (N, K, D): K = 1 or 2 condition tokens
        if context is None:
            raise ValueError("this text model needs the prompt's token features (context=..., context_mask=...)")
        text = self.context_embedder(context)  # (N, L, D)
        # rows without tokens (the "learned" null condition) read the learned null token
        text, mask = with_null_token(text, None if context_mask is None else context_mask.bool(), self.null_token)
        if self.kind.prefix_tokens:  # the time token leads the text tokens in the sequence
            text = torch.cat([c[:, None], text], dim=1)  # (N, 1 + L, D)
            if mask is not None:
                mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return c, text, mask

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
        context_mask: Tensor | None = None, pooled: Tensor | None = None,
    ) -> Tensor:
        gh, gw = self.token_grid(*x.shape[-2:])
        x = self.x_embedder(x)  # (N, T, D)
        rope = None
        if self.config.pos_embed == "rope":
            rope = tuple(r.to(x.device) for r in grid_rope(self.config, gh, gw))  # (T, d/2) x 2
        if rope is None:
            x = x + self._positions(gh, gw, x)
        c, tokens, mask = self.embed_condition(t, y, context, context_mask, pooled)
        num_prefix = 0
        if self.kind.prefix_tokens:
            num_prefix = tokens.shape[1]
            x = torch.cat([tokens, x], dim=1)  # (N, K + T, D)
            if mask is not None:  # condition tokens that are padding: masked for every query
                mask = torch.cat([mask, torch.ones(mask.shape[0], x.shape[1] - num_prefix, dtype=torch.bool,
                                                   device=mask.device)], dim=1)  # (N, K + T)
        context = tokens if self.kind.uses_tokens else None
        mod = self.t_block(c) if self.t_block is not None else c  # (N, k*D) shared modulations, or c
        # condition tokens riding along are not rotated; blocks see the keyword only with RoPE positions
        extra = {} if rope is None else {"rope": rope_pad(rope, before=num_prefix)}
        recompute = self.checkpointed_blocks() if torch.is_grad_enabled() else 0  # the first `recompute` blocks
        for i, blk in enumerate(self.blocks):
            args = (x, mod, context, mask)
            x = checkpoint(blk, *args, use_reentrant=False, **extra) if i < recompute else blk(*args, **extra)
        x = x[:, num_prefix:]  # (N, T, D): the condition tokens leave again
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x, gh, gw)  # (N, C_out, H, W)

    def extra_repr(self) -> str:
        cfg = self.config
        cond = f"text={cfg.context_dim}" if cfg.context_dim else f"classes={cfg.num_classes}"
        return f"{cfg.name}, block={cfg.block}, input_size={cfg.input_size}, {cond}"

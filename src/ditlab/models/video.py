"""A space-time Diffusion Transformer for video latents (N, C, F, H, W), built from DiT's blocks.

Latte (Ma et al. 2024) and Open-Sora run DiT blocks over the latent patches of every frame; this module
follows them:

* **Tokens.** Per-frame 2-D patches (``temporal_patch_size`` 1: the image DiT's own patch embedding) or
  tubelets of ``pt`` frames x p x p (a 3-D convolution). A clip of F frames on an h x w latent becomes
  F/pt token frames of S = (h/p)(w/p) tokens each.
* **Positions.** The image DiT's 2-D sin-cos over space, added to every frame's tokens, plus a 1-D sin-cos
  over (token) frames: added to the input of every temporal attention (interleaved layout: inside the
  temporal branch, so the residual stream of an image is untouched) or to the tokens (full layout).
  ``pos_embed="rope"`` replaces both by 3-D rotary positions in every attention (time, rows and columns get
  about a third of each head's frequencies; within a frame the time angles cancel, across frames at one
  place the space angles do).
* **Layouts.** ``interleaved`` (Latte's best variant): after each spatial block (attention within a
  frame) a temporal block (attention across the frames at one spatial position). ``full``: every block
  attends over all tokens of the clip (CogVideoX; affordable at small token counts).
* **Conditioning.** adaLN-Zero from c = time + condition embedding, as for images; temporal blocks are
  adaLN-Zero blocks too, so they start as the identity.
* **Images.** A 1-frame input is an image: the temporal blocks are skipped, and with per-frame patches
  and sin-cos positions the model computes exactly what the image DiT with the same weights computes.
  ``num_images`` trailing frames of every sample can be independent images in a video batch (Latte's
  image-video joint training): they see only the spatial blocks. ``video_from_image`` copies an image
  DiT into a video model with fresh, zero-gated temporal blocks (Open-Sora's recipe), so that its first
  step reproduces the image model frame by frame.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ditlab.errors import ModelError
from ditlab.models.blocks import AdaLNZeroBlock, FinalLayer
from ditlab.models.config import DiTConfig
from ditlab.models.dit import DiT
from ditlab.models.layers import modulate, sincos_1d


# ----------------------------------------------------------------------------- positions
def sincos_time(dim: int, num_frames: int) -> Tensor:
    """1-D sin-cos positions of ``num_frames`` token frames -> (F, dim) float32."""
    return sincos_1d(dim, torch.arange(num_frames)).float()


def rope_3d(head_dim: int, frames: int, grid_h: int, grid_w: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """3-D rotary tables (cos, sin), each (frames * grid_h * grid_w, head_dim / 2), tokens frame-major
    then row-major (the order of a clip's tokens).

    The head_dim/2 rotation frequencies are shared out: rows and columns get ``(head_dim/2) // 3`` each,
    time the rest; an axis with m of them uses theta^(-i/m), i < m (RoFormer's spacing per axis).
    """
    half = head_dim // 2
    if head_dim % 2 or half < 3:
        raise ModelError(f"3-D rotary positions need an even head size >= 6, got {head_dim}")
    m_space = half // 3
    m_time = half - 2 * m_space

    def freqs(m: int) -> Tensor:
        return theta ** (-torch.arange(m, dtype=torch.float64) / m)  # (m,)

    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    angles = torch.cat([
        t.reshape(-1, 1).double() * freqs(m_time),
        h.reshape(-1, 1).double() * freqs(m_space),
        w.reshape(-1, 1).double() * freqs(m_space),
    ], dim=1)  # (F*S, half)
    return angles.cos().float(), angles.sin().float()


# ----------------------------------------------------------------------------- embedding and blocks
class TubeletEmbed(nn.Module):
    """Tubelets (ViViT): a pt x p x p convolution with the same stride, (N, C, F, H, W) -> (N, F/pt, S, D)."""

    def __init__(self, temporal_patch: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        k = (temporal_patch, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (N, D, F', h', w')
        return x.flatten(3).permute(0, 2, 3, 1).contiguous()  # (N, F', S, D)


class SpaceTimeBlock(AdaLNZeroBlock):
    """An adaLN-Zero block (same parameters as the image block) that also takes positions for its attention.

    ``c`` may have fewer rows than ``x``: each row of ``c`` then serves ``x.shape[0] // c.shape[0]``
    consecutive rows of ``x`` (the frames, or the spatial positions, of one sample), so the modulation is
    computed once per sample. ``pos`` (1, L, D) is added to the attention's input only (not to the
    residual stream); ``rope`` are RoPE tables (L, head_dim/2).
    """

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                pos: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        mods = self.adaLN_modulation(c)  # (n, 6D)
        if mods.shape[0] != x.shape[0]:
            mods = mods.repeat_interleave(x.shape[0] // mods.shape[0], dim=0)  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (N, L, D)
        if pos is not None:
            h = h + pos
        x = x + gate_msa.unsqueeze(1) * self.attn(h, rope=rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # (N, L, D)


def _rows(t: Tensor | None, repeats: int) -> Tensor | None:
    """Each row of ``t`` repeated ``repeats`` times in place (per-sample tensors for per-frame rows)."""
    return None if t is None or repeats == 1 else t.repeat_interleave(repeats, dim=0)


# ----------------------------------------------------------------------------- the model
class VideoDiT(DiT):
    """Space-time DiT. ``model(x, t, **cond) -> (N, out_channels, F, H, W)``; see the module docstring.

    Args of forward (besides DiT's ``t``, ``y``, ``context``, ``context_mask``, ``pooled``):
        x: (N, C, F, H, W) latents; F divisible by ``temporal_patch_size``; F = 1 is an image.
        num_images: the last ``num_images`` frames of every sample are independent images (joint
            training): spatial blocks only, no temporal positions.
    """

    def __init__(self, config: DiTConfig):
        if not config.is_video:
            raise ModelError("VideoDiT needs num_frames > 0: build an image model with DiT")
        super().__init__(config)  # embedders, spatial positions, the image blocks, the final layer
        d, p, pt = config.hidden_size, config.patch_size, config.temporal_patch_size
        self.temporal_patch = pt
        if config.block == "adaLN-Zero":  # the same parameters; takes positions for its attention
            self.blocks = nn.ModuleList(
                SpaceTimeBlock(d, config.num_heads, config.mlp_ratio, config.qk_norm) for _ in range(config.depth)
            )
        if pt > 1:
            self.x_embedder = TubeletEmbed(pt, p, config.in_channels, d)
            self.final_layer = FinalLayer(d, p, pt * self.out_channels, adaptive=self.kind.adaptive_final,
                                          zero_modulation=self.kind.zero_final_modulation)
        self.temporal_blocks = nn.ModuleList(
            SpaceTimeBlock(d, config.num_heads, config.mlp_ratio, config.qk_norm)
            for _ in range(config.depth if config.layout == "interleaved" else 0)
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init, and zeroed adaLN-Zero modulation in the temporal blocks (each starts as the identity)."""
        super().initialize_weights()
        for block in getattr(self, "temporal_blocks", ()):
            block.init_weights()

    # ------------------------------------------------------------------ pieces of forward
    def _embed(self, x: Tensor) -> Tensor:
        """(N, C, F, H, W) -> tokens (N, F', S, D)."""
        n, c, f, h, w = x.shape
        if self.temporal_patch > 1:
            return self.x_embedder(x)
        frames = x.transpose(1, 2).reshape(n * f, c, h, w)  # (N*F, C, H, W)
        return self.x_embedder(frames).reshape(n, f, -1, self.config.hidden_size)  # (N, F, S, D)

    def _unpatchify(self, x: Tensor, frames: int, grid_h: int, grid_w: int) -> Tensor:
        """(N, F'*S, pt*p*p*C) -> (N, C, F'*pt, H, W); for pt = 1 each frame as DiT.unpatchify."""
        n, p, pt, c = x.shape[0], self.patch_size, self.temporal_patch, self.out_channels
        x = x.reshape(n, frames, grid_h, grid_w, pt, p, p, c)
        x = torch.einsum("nfhwtpqc->ncfthpwq", x)
        return x.reshape(n, c, frames * pt, grid_h * p, grid_w * p)

    def _call(self, block: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
        """``block(*args)``, recomputed in the backward pass when it is among the first ``checkpointed_blocks()``
        spatial or temporal blocks (grad_checkpointing N counts block pairs)."""
        if torch.is_grad_enabled() and self._index(block) < self.checkpointed_blocks():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def _index(self, block: nn.Module) -> int:
        for blocks in (self.blocks, self.temporal_blocks):
            for i, b in enumerate(blocks):
                if b is block:
                    return i
        raise ValueError("not a block of this model")

    def _spatial(self, block: nn.Module, x: Tensor, c: Tensor, ctx: Tensor | None, mask: Tensor | None,
                 rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """Attention within each frame: x (N, F, S, D) -> (N, F, S, D)."""
        n, f, s, d = x.shape
        rows = x.reshape(n * f, s, d)
        if isinstance(block, SpaceTimeBlock):
            out = self._call(block, rows, c, _rows(ctx, f), _rows(mask, f),
                             rope=None if rope is None else (rope[0][:s], rope[1][:s]))
        else:
            out = self._call(block, rows, _rows(c, f), _rows(ctx, f), _rows(mask, f))
        return out.reshape(n, f, s, d)

    def _joint(self, block: nn.Module, x: Tensor, c: Tensor, ctx: Tensor | None, mask: Tensor | None,
               rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """Full 3-D attention over all tokens of the clip: x (N, F, S, D) -> (N, F, S, D)."""
        n, f, s, d = x.shape
        if isinstance(block, SpaceTimeBlock):
            out = self._call(block, x.reshape(n, f * s, d), c, ctx, mask, rope=rope)
        else:
            out = self._call(block, x.reshape(n, f * s, d), c, ctx, mask)
        return out.reshape(n, f, s, d)

    def _temporal(self, block: SpaceTimeBlock, x: Tensor, c: Tensor, pos: Tensor | None,
                  rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """Attention across the frames at each spatial position: x (N, F, S, D) -> (N, F, S, D)."""
        n, f, s, d = x.shape
        rows = x.transpose(1, 2).reshape(n * s, f, d)  # (N*S, F, D)
        if rope is not None:  # the tokens of spatial position 0 at every frame: time angles only
            rope = (rope[0][::s], rope[1][::s])
        rows = self._call(block, rows, c, pos=pos, rope=rope)
        return rows.reshape(n, s, f, d).transpose(1, 2)  # (N, F, S, D)

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
        context_mask: Tensor | None = None, pooled: Tensor | None = None, num_images: int = 0,
    ) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"a video model takes latents (N, C, F, H, W), got shape {tuple(x.shape)}: "
                             "pass images as 1-frame videos (x.unsqueeze(2))")
        f, pt = x.shape[2], self.temporal_patch
        gh, gw = self.token_grid(*x.shape[-2:])
        if f % pt:
            raise ValueError(f"{f} frames are not divisible by the temporal patch size {pt}")
        if not 0 <= num_images <= f or (num_images and pt > 1):
            raise ValueError(f"num_images must be in [0, {f}] and needs per-frame patches (temporal patch 1), "
                             f"got {num_images} with temporal patch {pt}")
        frames, clip = f // pt, f // pt - num_images  # token frames; those forming the video clip
        x = self._embed(x)  # (N, F', S, D)
        c, ctx, mask = self.embed_condition(t, y, context, context_mask, pooled)
        rope = pos_t = None
        if self.config.pos_embed == "rope":
            rope = rope_3d(self.config.hidden_size // self.config.num_heads, max(clip, 1), gh, gw)
            rope = (rope[0].to(x.device), rope[1].to(x.device))
        else:
            x = x + self._positions(gh, gw, x)[:, None]  # (1, 1, S, D): every frame, as the image model
            pos_t = sincos_time(self.config.hidden_size, clip).to(x)[None]  # (1, F_clip, D)
        full = self.config.layout == "full"
        if full and pos_t is not None and clip > 1:
            x = torch.cat([x[:, :clip] + pos_t[:, :, None], x[:, clip:]], dim=1)
        for i, block in enumerate(self.blocks):
            if full and clip > 1:  # the clip attends as one sequence, the images each within themselves
                video = self._joint(block, x[:, :clip], c, ctx, mask, rope)
                x = video if clip == frames else torch.cat(
                    [video, self._spatial(block, x[:, clip:], c, ctx, mask, rope)], dim=1)
            else:
                x = self._spatial(block, x, c, ctx, mask, rope)
            if not full and clip > 1:  # an image (or a 1-frame clip) skips the temporal blocks
                video = self._temporal(self.temporal_blocks[i], x[:, :clip], c, pos_t, rope)
                x = video if clip == frames else torch.cat([video, x[:, clip:]], dim=1)
        n, _, s, d = x.shape
        x = self.final_layer(x.reshape(n, frames * s, d), c)  # (N, F'*S, pt*p*p*C_out)
        return self._unpatchify(x, frames, gh, gw)  # (N, C_out, F, H, W)

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"{super().extra_repr()}, frames={cfg.num_frames}, temporal_patch={cfg.temporal_patch_size}, "
                f"layout={cfg.layout}, pos_embed={cfg.pos_embed}")


# ----------------------------------------------------------------------------- from an image model
def inflate_image_state(image_state: dict[str, Tensor], video: VideoDiT) -> dict[str, Tensor]:
    """The image DiT's weights in the video model's layout: per-frame patches take them as they are; tubelet
    models get the patch kernel spread evenly over the pt frames and the decoder repeated per frame (a static
    clip then embeds as its image does; not an exact identity)."""
    pt = video.temporal_patch
    state = dict(image_state)
    if pt > 1:
        w = state["x_embedder.proj.weight"]  # (D, C, p, p)
        state["x_embedder.proj.weight"] = w.unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt  # (D, C, pt, p, p)
        for key in ("final_layer.linear.weight", "final_layer.linear.bias"):
            state[key] = state[key].repeat(pt, *([1] * (state[key].dim() - 1)))  # (pt*p*p*C, ...)
    return state


def load_image_weights(video: VideoDiT, image_state: dict[str, Tensor]) -> VideoDiT:
    """Copy an image DiT's weights into ``video``: every image tensor must find its place (same width,
    depth, patch, channels, classes); the temporal blocks keep their zero-gated init."""
    state = inflate_image_state(image_state, video)
    own = video.state_dict()
    extra = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    missing = sorted(k for k in own if k not in state and not k.startswith("temporal_blocks."))
    if extra or wrong or missing:
        bad = (extra + wrong + missing)[:3]
        raise ModelError(f"the image checkpoint does not fit this video model ({len(extra + wrong + missing)} "
                         f"tensors, e.g. {bad}): use the image model's width, depth, patch size, channels and "
                         "classes")
    own.update(state)
    video.load_state_dict(own)
    return video


def video_from_image(image: DiT, num_frames: int, **video_fields: Any) -> VideoDiT:
    """A video model with ``image``'s weights (spatial blocks, embedders, final layer) and zero-gated temporal
    blocks, so that before any training it computes the image model frame by frame.

    ``video_fields``: ``temporal_patch_size``, ``layout``, ``pos_embed`` (see ``DiTConfig``).
    """
    fields = {**image.config.to_dict(), "num_frames": int(num_frames), **video_fields}
    video = VideoDiT(DiTConfig.from_dict(fields)).to(next(image.parameters()).device)
    return load_image_weights(video, image.state_dict())


def video_token_count(config: DiTConfig, num_frames: int | None = None) -> int:
    """Tokens of one clip: (F / pt) x (H / p) x (W / p)."""
    f = config.num_frames if num_frames is None else num_frames
    return math.prod(config.grid_size) * (f // config.temporal_patch_size)

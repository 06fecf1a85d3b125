"""Conversion between ditlab's PixArt model (a DiT with ``block="pixart"``) and diffusers'
``PixArtTransformer2DModel`` (PixArt-α, PixArt-Σ).

The two compute the same function once the layouts are mapped: diffusers splits the fused q/k/v projections
of the self-attention (``attn1``) and the cross-attention (``attn2``), names adaLN-single's shared MLP
``adaln_single.linear`` and the time MLP ``adaln_single.emb.timestep_embedder``, and keeps the caption
projection as ``caption_projection``; the per-block and final ``scale_shift_table`` are the same tensors.
Masked text tokens: diffusers adds -10000 to their attention logits, ditlab excludes them; the outputs agree
to float32 rounding whenever a row has at least one real token.

Time: diffusers' ``timestep`` is ditlab's ``t`` times ``timestep_scale`` (1 for DDPM, which PixArt uses).
Positions: PixArt's sin-cos table spans a ``sample_size / patch_size`` base grid divided by its interpolation
scale, which ditlab computes in closed form (``pos_base_size``, ``pos_scale``). Not held: PixArt-α 1024's
resolution and aspect-ratio embedders (``use_additional_conditions``), and (on export) a learned null token
or a pooled prompt vector, which diffusers' PixArt has no place for.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ditlab.errors import ModelError
from ditlab.models import DiT, DiTConfig, load_state_dict_strict

_TOP = {  # ditlab key -> diffusers key (weight and bias each)
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2",
    "t_block.linear": "adaln_single.linear",
    "context_embedder.linear_1": "caption_projection.linear_1",
    "context_embedder.linear_2": "caption_projection.linear_2",
    "final_layer.linear": "proj_out",
}
_BLOCK = {"attn.proj": "attn1.to_out.0", "cross_attn.proj": "attn2.to_out.0", "mlp.fc1": "ff.net.0.proj",
          "mlp.fc2": "ff.net.2"}
_QKV = {"attn": "attn1", "cross_attn": "attn2"}


def _pairs(depth: int) -> list[tuple[str, str]]:
    """(ditlab key, diffusers key) for every tensor but the fused/split q/k/v."""
    pairs = [(f"{ours}.{p}", f"{theirs}.{p}") for ours, theirs in _TOP.items() for p in ("weight", "bias")]
    pairs.append(("final_layer.scale_shift_table", "scale_shift_table"))
    for i in range(depth):
        mine, yours = f"blocks.{i}.", f"transformer_blocks.{i}."
        pairs += [(f"{mine}{ours}.{p}", f"{yours}{theirs}.{p}") for ours, theirs in _BLOCK.items()
                  for p in ("weight", "bias")]
        pairs.append((f"{mine}scale_shift_table", f"{yours}scale_shift_table"))
    return pairs


def _check_exportable(cfg: DiTConfig) -> None:
    h, w = cfg.input_size
    base = cfg.pos_base_size
    problems = []
    if cfg.block != "pixart":
        problems.append(f"block {cfg.block!r}")
    if h != w:
        problems.append(f"non-square input {h}x{w}")
    if cfg.pos_embed != "sincos" or cfg.pos_max_size or base not in (0, h // cfg.patch_size):
        problems.append("positions other than PixArt's (sin-cos over the input_size / patch_size grid)")
    if cfg.pooled_dim:
        problems.append("a pooled prompt vector")
    if cfg.learned_null:
        problems.append("a learned null token (train with --text_null empty)")
    if cfg.qk_norm or cfg.mlp_ratio != 4.0 or cfg.frequency_embedding_size != 256 or cfg.timestep_freq_shift != 0:
        problems.append("qk-norm, an MLP ratio or a time sinusoid other than PixArt's")
    if problems:
        raise ModelError(f"diffusers' PixArtTransformer2DModel cannot hold this model ({', '.join(problems)}): "
                         "keep it in ditlab's format (save_pretrained)")


def to_diffusers_pixart(model: DiT):
    """A diffusers ``PixArtTransformer2DModel`` computing the same function as ``model`` (a PixArt DiT); with
    ``pos_base_size=0`` the two agree at the model's own input size (diffusers always interpolates)."""
    from diffusers import PixArtTransformer2DModel

    cfg = model.config
    _check_exportable(cfg)
    d, heads = cfg.hidden_size, cfg.num_heads
    with torch.device("meta"):
        tr = PixArtTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=d // heads, in_channels=cfg.in_channels,
            out_channels=cfg.out_channels, num_layers=cfg.depth, cross_attention_dim=d, sample_size=cfg.input_size[0],
            patch_size=cfg.patch_size, interpolation_scale=cfg.pos_scale, use_additional_conditions=False,
            caption_channels=cfg.context_dim,
        )
    src = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {theirs: src[ours] for ours, theirs in _pairs(cfg.depth)}
    for i in range(cfg.depth):
        for ours, theirs in _QKV.items():
            for part in ("weight", "bias"):
                fused = src[f"blocks.{i}.{ours}.qkv.{part}"].chunk(3)  # q, k, v
                for name, t in zip(("to_q", "to_k", "to_v"), fused, strict=True):
                    out[f"transformer_blocks.{i}.{theirs}.{name}.{part}"] = t
    device = src["x_embedder.proj.weight"].device
    tr.load_state_dict({k: v.to(device).float().clone() for k, v in out.items()}, strict=True, assign=True)
    # the position table is a non-persistent buffer: computed again where the weights now live
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    side = cfg.input_size[0] // cfg.patch_size
    table = get_2d_sincos_pos_embed(d, side, base_size=side, interpolation_scale=cfg.pos_scale, output_type="pt")
    tr.pos_embed.pos_embed = table.float().unsqueeze(0).to(device)
    return tr.eval()


def pixart_fields(c) -> dict[str, Any]:
    """The ditlab config fields (block ``pixart``) of a diffusers PixArtTransformer2DModel config; a one-line
    ModelError for what ditlab's PixArt block does not hold."""
    heads, hd = c.num_attention_heads, c.attention_head_dim
    d = heads * hd
    extra = c.use_additional_conditions if c.use_additional_conditions is not None else c.sample_size == 128
    problems = []
    if extra:
        problems.append("PixArt-α 1024's resolution and aspect-ratio embedders (use_additional_conditions)")
    if c.caption_channels is None:
        problems.append("no caption projection (caption_channels)")
    if c.cross_attention_dim != d:
        problems.append(f"cross_attention_dim {c.cross_attention_dim} != width {d}")
    if c.norm_type != "ada_norm_single" or c.norm_elementwise_affine or c.activation_fn != "gelu-approximate":
        problems.append("norms or activations other than PixArt's")
    if not c.attention_bias or c.attention_type != "default":
        problems.append("attention without biases or of another type")
    out_ch = c.out_channels if c.out_channels is not None else c.in_channels
    if out_ch not in (c.in_channels, 2 * c.in_channels):
        problems.append(f"out_channels {out_ch} neither in_channels nor twice it")
    if problems:
        raise ModelError(f"this PixArtTransformer2DModel has {', '.join(problems)}: ditlab converts PixArt-α/Σ "
                         "transformers without them")
    scale = c.interpolation_scale if c.interpolation_scale is not None else max(c.sample_size // 64, 1)
    return dict(
        block="pixart", depth=c.num_layers, hidden_size=d, num_heads=heads, patch_size=c.patch_size,
        in_channels=c.in_channels, learn_sigma=out_ch == 2 * c.in_channels, num_classes=0,
        context_dim=c.caption_channels, pooled_dim=0, input_size=c.sample_size, pos_scale=float(scale),
        pos_base_size=c.sample_size // c.patch_size, timestep_scale=1.0,
    )


def from_diffusers_pixart(transformer, name: str | None = None, **overrides: Any) -> DiT:
    """A ditlab PixArt DiT holding the weights of a diffusers ``PixArtTransformer2DModel``."""
    from ditlab.interop.sd3 import imported_config

    cfg = imported_config(pixart_fields(transformer.config), name, "PixArt-custom", overrides)
    src = {k: v.detach().to("cpu") for k, v in transformer.state_dict().items()}
    sd: dict[str, Tensor] = {ours: src[theirs] for ours, theirs in _pairs(cfg.depth) if theirs in src}
    for i in range(cfg.depth):
        for ours, theirs in _QKV.items():
            for part in ("weight", "bias"):
                pieces = [src.get(f"transformer_blocks.{i}.{theirs}.{n}.{part}") for n in ("to_q", "to_k", "to_v")]
                if all(p is not None for p in pieces):
                    sd[f"blocks.{i}.{ours}.qkv.{part}"] = torch.cat(pieces, dim=0)
    with torch.device("meta"):
        model = DiT(cfg)
    model = model.to_empty(device="cpu")
    from ditlab.models.positions import grid_sincos

    sd["pos_embed"] = grid_sincos(cfg, *cfg.grid_size)[None]  # fixed positions, computed (not stored by diffusers)
    load_state_dict_strict(model, {k: v.float() for k, v in sd.items()}, source="diffusers PixArt transformer")
    return model.eval()

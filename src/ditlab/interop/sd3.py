"""Conversion between ditlab's MMDiT and diffusers' ``SD3Transformer2DModel`` (Stable Diffusion 3).

The two compute the same function once the layouts are mapped: diffusers splits the fused q/k/v projections
of each stream (``to_q``/``to_k``/``to_v`` for the image, ``add_q_proj``/... for the text), names the
modulations after its norm layers, and orders the (shift, scale) pair of its continuous adaptive norms
(the pre-only text norm of the last block and the output norm) as (scale, shift).

Time: diffusers' ``timestep`` argument is ditlab's ``t`` times ``timestep_scale`` (SD3's pipeline passes
1000 sigma, ditlab's flow passes sigma in [0, 1] to a model built with ``timestep_scale=1000``).
Text: SD3 attends to every text token, padding included; give the converted model ``context_mask=None``
(or all True) to reproduce it. Positions: SD3 crops a ``pos_embed_max_size``² sin-cos table on a
``sample_size / patch_size`` base; ditlab recomputes the same closed form (``pos_max_size``,
``pos_base_size``), and import checks the checkpoint's table against it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ditlab.errors import CheckpointError, ModelError
from ditlab.models import DiTConfig, load_state_dict_strict
from ditlab.models.designs import DESIGN_MODELS
from ditlab.models.mmdit import MMDiT
from ditlab.models.positions import grid_sincos

_TOP = {  # ditlab key -> diffusers key
    "x_embedder.proj.weight": "pos_embed.proj.weight",
    "x_embedder.proj.bias": "pos_embed.proj.bias",
    "t_embedder.mlp.0.weight": "time_text_embed.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_text_embed.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_text_embed.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_text_embed.timestep_embedder.linear_2.bias",
    "pooled_embedder.linear_1.weight": "time_text_embed.text_embedder.linear_1.weight",
    "pooled_embedder.linear_1.bias": "time_text_embed.text_embedder.linear_1.bias",
    "pooled_embedder.linear_2.weight": "time_text_embed.text_embedder.linear_2.weight",
    "pooled_embedder.linear_2.bias": "time_text_embed.text_embedder.linear_2.bias",
    "context_embedder.weight": "context_embedder.weight",
    "context_embedder.bias": "context_embedder.bias",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.linear.bias": "proj_out.bias",
}
_SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}  # (shift, scale) <-> (scale, shift)
_BLOCK = {  # ditlab block key -> diffusers block key (every stream's fused qkv handled apart)
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "context_attn.proj": "attn.to_add_out",
    "context_mlp.fc1": "ff_context.net.0.proj",
    "context_mlp.fc2": "ff_context.net.2",
}
_QKV = {"attn": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "context_attn": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_NORMS = {"attn.q_norm": "attn.norm_q", "attn.k_norm": "attn.norm_k",
          "context_attn.q_norm": "attn.norm_added_q", "context_attn.k_norm": "attn.norm_added_k"}


def _swap(t: Tensor) -> Tensor:
    """Exchange the two halves along dim 0 (the (shift, scale) order of a 2D-wide modulation)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _pairs(depth: int, qk_norm: bool) -> list[tuple[str, str, bool]]:
    """(ditlab key, diffusers key, halves swapped) for every tensor but the fused/split q/k/v."""
    pairs = [(ours, theirs, False) for ours, theirs in _TOP.items()]
    for ours, theirs in _SWAPPED.items():
        pairs += [(f"{ours}.{p}", f"{theirs}.{p}", True) for p in ("weight", "bias")]
    for i in range(depth):
        pre_only = i == depth - 1
        mine, yours = f"blocks.{i}.", f"transformer_blocks.{i}."
        block = dict(_BLOCK)
        if pre_only:  # no text output projection or MLP; the text norm regresses (scale, shift) only
            for key in ("context_attn.proj", "context_mlp.fc1", "context_mlp.fc2"):
                del block[key]
        for ours, theirs in block.items():
            pairs += [(f"{mine}{ours}.{p}", f"{yours}{theirs}.{p}", False) for p in ("weight", "bias")]
        pairs += [(f"{mine}context_adaLN_modulation.1.{p}", f"{yours}norm1_context.linear.{p}", pre_only)
                  for p in ("weight", "bias")]
        if qk_norm:
            pairs += [(f"{mine}{ours}.weight", f"{yours}{theirs}.weight", False) for ours, theirs in _NORMS.items()]
    return pairs


def _check_exportable(cfg: DiTConfig) -> None:
    p = cfg.patch_size
    h, w = cfg.input_size
    base = cfg.pos_base_size or cfg.pos_max_size
    problems = []
    if h != w:
        problems.append(f"non-square input {h}x{w}")
    if cfg.pos_embed != "sincos":
        problems.append(f"{cfg.pos_embed} positions")
    if not cfg.pos_max_size or base != h // p or cfg.pos_scale != 1.0:
        problems.append("positions other than SD3's crop (pos_max_size > 0 on a base of input_size / patch_size)")
    if not cfg.pooled_dim:
        problems.append("no pooled prompt vector")
    if cfg.mlp_ratio != 4.0 or cfg.frequency_embedding_size != 256 or cfg.timestep_freq_shift != 0:
        problems.append("an MLP ratio or time sinusoid other than SD3's")
    if problems:
        raise ModelError(f"diffusers' SD3Transformer2DModel cannot hold this model ({', '.join(problems)}): "
                         "keep it in ditlab's format (save_pretrained)")


def _registered_name(fields: dict[str, Any]) -> str | None:
    """The registered design model with exactly this architecture (e.g. ``SD3-medium``), if any."""
    ignore = {"name", "extra", "grad_checkpointing"}
    mine = {k: v for k, v in DiTConfig(**fields).to_dict().items() if k not in ignore}
    for name, f in DESIGN_MODELS.items():
        if {k: v for k, v in DiTConfig(**f).to_dict().items() if k not in ignore} == mine:
            return name
    return None


def imported_config(fields: dict[str, Any], name: str | None, fallback: str, overrides: dict[str, Any]) -> DiTConfig:
    """The config of a model imported from diffusers: ``fields`` read from its config, named ``name``, else the
    registered design of exactly this architecture, else ``fallback``; ``overrides`` (None values ignored) last."""
    if name is None:
        name = _registered_name(fields)
    fields = dict(fields, name=name or fallback)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return DiTConfig.from_dict(fields)


def to_diffusers_sd3(model: MMDiT):
    """A diffusers ``SD3Transformer2DModel`` computing the same function as ``model`` (an MMDiT)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    cfg = model.config
    _check_exportable(cfg)
    d, heads = cfg.hidden_size, cfg.num_heads
    with torch.device("meta"):
        tr = SD3Transformer2DModel(
            sample_size=cfg.input_size[0], patch_size=cfg.patch_size, in_channels=cfg.in_channels,
            num_layers=cfg.depth, attention_head_dim=d // heads, num_attention_heads=heads,
            joint_attention_dim=cfg.context_dim, caption_projection_dim=d, pooled_projection_dim=cfg.pooled_dim,
            out_channels=cfg.out_channels, pos_embed_max_size=cfg.pos_max_size,
            qk_norm="rms_norm" if cfg.qk_norm else None,
        )
    src = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    for ours, theirs, swapped in _pairs(cfg.depth, cfg.qk_norm):
        out[theirs] = _swap(src[ours]) if swapped else src[ours]
    for i in range(cfg.depth):
        for stream, names in _QKV.items():
            for part in ("weight", "bias"):
                for name, tensor in zip(names, src[f"blocks.{i}.{stream}.qkv.{part}"].chunk(3, dim=0), strict=True):
                    out[f"transformer_blocks.{i}.{name}.{part}"] = tensor
    base = cfg.input_size[0] // cfg.patch_size
    out["pos_embed.pos_embed"] = get_2d_sincos_pos_embed(d, cfg.pos_max_size, base_size=base, output_type="pt")[None]
    device = src["x_embedder.proj.weight"].device
    tr.load_state_dict({k: v.to(device).float().clone() for k, v in out.items()}, strict=True, assign=True)
    return tr.eval()


def sd3_fields(c) -> dict[str, Any]:
    """The ditlab config fields (block ``mmdit``) of a diffusers SD3Transformer2DModel config; a one-line
    ModelError for what MMDiT does not hold (SD3.5's dual attention, other q/k norms)."""
    heads, hd = c.num_attention_heads, c.attention_head_dim
    d = heads * hd
    problems = []
    if tuple(c.dual_attention_layers or ()):
        problems.append("SD3.5's dual-attention blocks")
    if c.qk_norm not in (None, "rms_norm"):
        problems.append(f"qk_norm {c.qk_norm!r}")
    if c.caption_projection_dim != d:
        problems.append(f"caption_projection_dim {c.caption_projection_dim} != width {d}")
    if not c.pos_embed_max_size:
        problems.append("no position table size")
    out_ch = c.out_channels if c.out_channels is not None else c.in_channels
    if out_ch not in (c.in_channels, 2 * c.in_channels):
        problems.append(f"out_channels {out_ch} neither in_channels nor twice it")
    if problems:
        raise ModelError(f"this SD3Transformer2DModel has {', '.join(problems)}: ditlab converts SD3's MMDiT only")
    fields: dict[str, Any] = dict(
        block="mmdit", depth=c.num_layers, hidden_size=d, num_heads=heads, patch_size=c.patch_size,
        in_channels=c.in_channels, learn_sigma=out_ch == 2 * c.in_channels, num_classes=0,
        context_dim=c.joint_attention_dim, pooled_dim=c.pooled_projection_dim, input_size=c.sample_size,
        pos_max_size=c.pos_embed_max_size, pos_base_size=c.sample_size // c.patch_size,
        qk_norm=c.qk_norm == "rms_norm", timestep_scale=1000.0,
    )
    return fields


def from_diffusers_sd3(transformer, name: str | None = None, **overrides: Any) -> MMDiT:
    """A ditlab MMDiT holding the weights of a diffusers ``SD3Transformer2DModel`` (SD3, not SD3.5's dual
    attention), with ``timestep_scale=1000`` so ditlab's flow time t in [0, 1] is SD3's 1000 sigma."""
    cfg = imported_config(sd3_fields(transformer.config), name, "MMDiT-custom", overrides)

    src = {k: v.detach().to("cpu") for k, v in transformer.state_dict().items()}
    table = src.pop("pos_embed.pos_embed", None)
    if table is not None:
        ours = grid_sincos(cfg, cfg.pos_max_size, cfg.pos_max_size)
        if table.shape[-2:] != ours.shape or (table[0].float() - ours).abs().max() > 1e-4:
            raise CheckpointError("the checkpoint's position table is not SD3's sin-cos table: ditlab computes "
                                  "positions in closed form and cannot hold learned ones")
    sd: dict[str, Tensor] = {}
    for ours, theirs, swapped in _pairs(cfg.depth, cfg.qk_norm):
        if theirs in src:
            sd[ours] = _swap(src[theirs]) if swapped else src[theirs]
    for i in range(cfg.depth):
        for stream, names in _QKV.items():
            for part in ("weight", "bias"):
                pieces = [src.get(f"transformer_blocks.{i}.{n}.{part}") for n in names]
                if all(p is not None for p in pieces):
                    sd[f"blocks.{i}.{stream}.qkv.{part}"] = torch.cat(pieces, dim=0)
    with torch.device("meta"):
        model = MMDiT(cfg)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, {k: v.float() for k, v in sd.items()}, source="diffusers SD3 transformer")
    with torch.no_grad():  # a non-persistent buffer: recomputed, not loaded
        model.pos_embed.copy_(grid_sincos(cfg, *cfg.grid_size)[None])
    return model.eval()

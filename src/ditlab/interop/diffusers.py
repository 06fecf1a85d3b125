"""Conversion to and from diffusers' ``DiTTransformer2DModel``.

diffusers keeps a copy of the shared timestep and label embedders inside every block
(``transformer_blocks.i.norm1.emb``) and splits the fused qkv projection into to_q/to_k/to_v.
Export duplicates the embedders; import accepts only identical copies.

Two differences between diffusers' DiT and the paper's: its timestep sinusoid divides by
(half - 1) instead of half (``downscale_freq_shift=1``), and its MLP-side layer norm uses
``norm_eps`` (1e-5 unless set) where the paper uses 1e-6. Import records the first in
``timestep_freq_shift=1``; export sets ``norm_eps=1e-6`` and, for models with the paper's
sinusoid, sets the in-memory ``time_proj`` attributes so the diffusers module computes exactly what
ditlab computes. diffusers' ``config.json`` cannot store those attributes: a diffusers model
saved and reloaded from such an export falls back to its own sinusoid.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ditlab.errors import CheckpointError, ModelError
from ditlab.models import DiT, DiTConfig, load_state_dict_strict
from ditlab.models.config import REGISTRY

_EMB = "norm1.emb."
_SHARED = {  # diffusers per-block embedder key (after norm1.emb.) -> ditlab key
    "timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
    "timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
    "timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
    "timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
    "class_embedder.embedding_table.weight": "y_embedder.embedding_table.weight",
}
_BLOCK = {  # diffusers block key -> ditlab block key (qkv handled apart)
    "norm1.linear.weight": "adaLN_modulation.1.weight",
    "norm1.linear.bias": "adaLN_modulation.1.bias",
    "attn1.to_out.0.weight": "attn.proj.weight",
    "attn1.to_out.0.bias": "attn.proj.bias",
    "ff.net.0.proj.weight": "mlp.fc1.weight",
    "ff.net.0.proj.bias": "mlp.fc1.bias",
    "ff.net.2.weight": "mlp.fc2.weight",
    "ff.net.2.bias": "mlp.fc2.bias",
}
_TOP = {
    "pos_embed.proj.weight": "x_embedder.proj.weight",
    "pos_embed.proj.bias": "x_embedder.proj.bias",
    "proj_out_1.weight": "final_layer.adaLN_modulation.1.weight",
    "proj_out_1.bias": "final_layer.adaLN_modulation.1.bias",
    "proj_out_2.weight": "final_layer.linear.weight",
    "proj_out_2.bias": "final_layer.linear.bias",
}


def _check_exportable(cfg: DiTConfig) -> None:
    h, w = cfg.input_size
    problems = []
    if cfg.block != "adaLN-Zero":
        problems.append(f"block {cfg.block!r} (diffusers has adaLN-Zero only)")
    if cfg.qk_norm:
        problems.append("qk-norm")
    if cfg.num_classes == 0:
        problems.append("no classes (diffusers' DiT is class-conditional)")
    if cfg.class_factors:
        problems.append("factored class labels (class_factors; diffusers has one label table)")
    if h != w:
        problems.append(f"non-square input {h}x{w}")
    if cfg.mlp_ratio != 4.0:
        problems.append(f"mlp_ratio {cfg.mlp_ratio}")
    if problems:
        raise ModelError(
            f"diffusers' DiTTransformer2DModel cannot hold this model ({', '.join(problems)}): "
            "keep it in ditlab's format (save_pretrained)"
        )


def to_diffusers(model: DiT):
    """A diffusers ``DiTTransformer2DModel`` computing the same function as ``model``."""
    from diffusers import DiTTransformer2DModel

    cfg = model.config
    _check_exportable(cfg)
    d = cfg.hidden_size
    with torch.device("meta"):
        tr = DiTTransformer2DModel(
            num_attention_heads=cfg.num_heads, attention_head_dim=d // cfg.num_heads,
            in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
            sample_size=cfg.input_size[0], patch_size=cfg.patch_size,
            activation_fn="gelu-approximate", num_embeds_ada_norm=cfg.num_classes,
            attention_bias=True, norm_type="ada_norm_zero", norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
    src = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {dk: src[ok] for dk, ok in _TOP.items()}
    for i in range(cfg.depth):
        pre, ours = f"transformer_blocks.{i}.", f"blocks.{i}."
        for dk, ok in _SHARED.items():
            out[pre + _EMB + dk] = src[ok]  # diffusers wants one copy per block
        for dk, ok in _BLOCK.items():
            out[pre + dk] = src[ours + ok]
        q, k, v = src[ours + "attn.qkv.weight"].chunk(3, dim=0)
        qb, kb, vb = src[ours + "attn.qkv.bias"].chunk(3, dim=0)
        for name, wt, bs in (("to_q", q, qb), ("to_k", k, kb), ("to_v", v, vb)):
            out[pre + f"attn1.{name}.weight"] = wt
            out[pre + f"attn1.{name}.bias"] = bs
    # Own copies, so training one model never changes the other.
    tr.load_state_dict({k: v.clone() for k, v in out.items()}, strict=True, assign=True)
    # Non-persistent buffer, still on the meta device: diffusers' own sin-cos table.
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    grid = cfg.input_size[0] // cfg.patch_size
    device = src["pos_embed"].device
    tr.pos_embed.pos_embed = torch.as_tensor(
        get_2d_sincos_pos_embed(d, grid, base_size=grid, output_type="pt")
    ).float().unsqueeze(0).to(device)
    for blk in tr.transformer_blocks:
        blk.norm1.emb.time_proj.downscale_freq_shift = cfg.timestep_freq_shift
        # diffusers multiplies the sinusoid's argument by ``scale``: the same as scaling t.
        blk.norm1.emb.time_proj.scale = cfg.timestep_scale
    tr.eval()
    return tr


def from_diffusers(transformer, name: str | None = None, **overrides: Any) -> DiT:
    """A ditlab DiT holding the weights of a diffusers ``DiTTransformer2DModel``.

    The per-block embedder copies must be identical; otherwise CheckpointError names the block.
    The result uses diffusers' timestep sinusoid (``timestep_freq_shift=1``) so outputs match;
    a ``norm_eps`` other than 1e-6 (diffusers' default is 1e-5) is not carried over, which
    changes outputs by about that epsilon's effect on one layer norm per block.
    """
    c = transformer.config
    if c.norm_type != "ada_norm_zero" or c.activation_fn != "gelu-approximate" or not c.attention_bias:
        raise ModelError(
            f"only diffusers DiT models with ada_norm_zero, gelu-approximate and attention bias "
            f"convert (got {c.norm_type}, {c.activation_fn}, bias={c.attention_bias})"
        )
    heads, hd = c.num_attention_heads, c.attention_head_dim
    d, depth, p = heads * hd, c.num_layers, c.patch_size
    out_ch = c.out_channels if c.out_channels is not None else c.in_channels
    if out_ch not in (c.in_channels, 2 * c.in_channels):
        raise ModelError(f"out_channels {out_ch} is neither in_channels nor twice it: not a DiT")
    if name is None:
        name = next((n for n, g in REGISTRY.items() if g == (depth, d, heads, p)), None)
    fields: dict[str, Any] = dict(
        name=name or "DiT-custom", depth=depth, hidden_size=d, num_heads=heads, patch_size=p,
        in_channels=c.in_channels, num_classes=c.num_embeds_ada_norm,
        learn_sigma=out_ch == 2 * c.in_channels, input_size=c.sample_size,
        timestep_freq_shift=float(transformer.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift),
    )
    fields.update({k: v for k, v in overrides.items() if v is not None})
    cfg = DiTConfig.from_dict(fields)

    src = {k: v.detach() for k, v in transformer.state_dict().items()}
    sd: dict[str, Tensor] = {ok: src[dk] for dk, ok in _TOP.items() if dk in src}
    first = "transformer_blocks.0." + _EMB
    for dk, ok in _SHARED.items():
        if first + dk in src:
            sd[ok] = src[first + dk]
    for i in range(depth):
        pre, ours = f"transformer_blocks.{i}.", f"blocks.{i}."
        for dk in _SHARED:
            key = pre + _EMB + dk
            if key in src and first + dk in src and not torch.equal(src[key], src[first + dk]):
                raise CheckpointError(
                    f"block {i} has its own {dk.split('.')[0]} ({key} differs from block 0): ditlab "
                    "shares one embedder across blocks, so this model cannot be converted"
                )
        for dk, ok in _BLOCK.items():
            if pre + dk in src:
                sd[ours + ok] = src[pre + dk]
        parts = [src.get(pre + f"attn1.to_{x}.weight") for x in "qkv"]
        biases = [src.get(pre + f"attn1.to_{x}.bias") for x in "qkv"]
        if all(t is not None for t in parts + biases):
            sd[ours + "attn.qkv.weight"] = torch.cat(parts, 0)
            sd[ours + "attn.qkv.bias"] = torch.cat(biases, 0)
    with torch.device("meta"):
        model = DiT(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():  # diffusers keeps positions as a non-persistent buffer: recompute
        from ditlab.models.layers import sincos_2d

        sd["pos_embed"] = sincos_2d(d, *cfg.grid_size).unsqueeze(0)
    load_state_dict_strict(model, {k: v.to("cpu") for k, v in sd.items()}, source="diffusers transformer")
    return model.eval()

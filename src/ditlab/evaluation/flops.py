"""Forward Gflops of a DiT, counted on the real module (Peebles & Xie, 2023, Table 4 / Fig. 6).

The paper reports multiply-adds (a fused multiply-add counts once). ``torch.utils.flop_counter``
counts 2 flops per multiply-add for matmuls and convolutions, so we halve its total. Models are
built on the meta device: counting XL/2 at 512 px takes no memory and no arithmetic.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ditlab.errors import ModelError
from ditlab.models import DiT, create_model
from ditlab.models.config import config_for

PAPER_MODELS = [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (8, 4, 2)]


def count_gflops(model: DiT, input_size: tuple[int, int] | None = None, text_tokens: int = 77) -> float:
    """Forward multiply-adds (in 1e9) of ``model`` for one latent of ``input_size`` (default: the config's);
    text models with a prompt of ``text_tokens`` token features (77: CLIP's length).

    Counted by running the module under ``FlopCounterMode`` (on the model's own device: use a
    meta-device model to count without computing).
    """
    cfg = model.config
    h, w = input_size or cfg.input_size
    device = next(model.parameters()).device
    x = torch.zeros(1, cfg.in_channels, h, w, device=device)
    t = torch.zeros(1, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if cfg.num_classes else None
    text = {}
    if cfg.context_dim:
        text["context"] = torch.zeros(1, text_tokens, cfg.context_dim, device=device)
    if cfg.pooled_dim:
        text["pooled"] = torch.zeros(1, cfg.pooled_dim, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, t, y, **text)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def model_gflops(name: str, image_size: int = 256, *, downsample: int = 8, **overrides: Any) -> dict[str, Any]:
    """``{"model", "image_size", "params", "gflops"}`` of a registered model at ``image_size`` pixels.

    The latent side is ``image_size / downsample`` (8 for the SD autoencoder the paper uses); it
    must be a multiple of the patch size. Parameters are counted as in the paper's figures.
    """
    if image_size < 1 or downsample < 1:
        raise ModelError(f"image size and downsampling must be positive, got {image_size}, {downsample}")
    p = config_for(name, **overrides).patch_size
    if image_size % (downsample * p):
        ok = max(downsample * p, round(image_size / (downsample * p)) * downsample * p)
        raise ModelError(
            f"image size {image_size} is not divisible by patch {p} x autoencoder downsampling "
            f"{downsample} = {downsample * p}: use e.g. {ok}"
        )
    model = create_model(name, device="meta", **{**overrides, "input_size": image_size // downsample})
    return {
        "model": name,
        "image_size": image_size,
        "params": sum(q.numel() for q in model.parameters()),
        "gflops": count_gflops(model),
    }


def gflops_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``model_gflops`` rows, with depth/width/heads/patch/tokens columns."""
    lines = [
        "| model | depth | hidden | heads | patch | tokens | params (M) | Gflops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cfg = config_for(r["model"])
        side = r["image_size"] // r.get("downsample", 8) // cfg.patch_size
        lines.append(
            f"| {r['model']} | {cfg.depth} | {cfg.hidden_size} | {cfg.num_heads} | {cfg.patch_size} "
            f"| {side * side} | {r['params'] / 1e6:.1f} | {r['gflops']:.2f} |"
        )
    return "\n".join(lines)

"""The facebookresearch/DiT ``models.py`` checkpoint layout (the paper's released weights).

Our module names follow that layout, so the mapping is one key to one key; what this module adds is
reading the files (plain state dicts, or training checkpoints ``{"model", "ema", "opt", "args"}``),
inferring the geometry from tensor shapes, and refusing partial loads.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ditlab.errors import CheckpointError, ModelError
from ditlab.models import DiT, DiTConfig, load_state_dict_strict
from ditlab.models.config import REGISTRY


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``.pt``/``.pth`` (without unpickling code) or ``.safetensors`` file as a dict."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist: pass the path of a .pt or .safetensors file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except (SafetensorError, OSError) as err:  # truncated or not a safetensors file
            raise CheckpointError(f"cannot read {p} ({str(err).splitlines()[0][:80]}): the file is damaged; "
                                  "download or export it again") from None
    try:
        # Official training checkpoints also hold the argparse Namespace of the run: allow that
        # one harmless class, nothing else.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file or a pickle that needs arbitrary code
        raise CheckpointError(
            f"cannot read {p} safely ({type(err).__name__}): pass a state-dict .pt or .safetensors file"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a state dict: pass a model checkpoint")
    return dict(obj)


def official_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The weights of an official file: the ``ema`` entry of a training checkpoint if present,
    else ``model``, else the mapping itself; a DDP ``module.`` prefix is removed."""
    sd: Any = checkpoint
    for key in ("ema", "model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            sd = checkpoint[key]
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(
                f"entry {k!r} is a {type(v).__name__}, not a tensor: pass a DiT state dict or training checkpoint"
            )
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def infer_official_geometry(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Read depth, width, patch, channels, classes, learned sigma and input size from the shapes."""
    try:
        w = sd["x_embedder.proj.weight"]  # (D, C, p, p)
        dec = sd["final_layer.linear.weight"]  # (p*p*C_out, D)
        pos = sd.get("pos_embed")  # (1, T, D)
    except KeyError as err:
        raise CheckpointError(
            f"not a DiT checkpoint: key {err.args[0]!r} is missing; pass a facebookresearch/DiT state dict"
        ) from None
    hidden, c, p = w.shape[0], w.shape[1], w.shape[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    out_ch = dec.shape[0] // (p * p)
    geo: dict[str, Any] = dict(hidden_size=hidden, in_channels=c, patch_size=p, depth=depth,
                               learn_sigma=out_ch == 2 * c)
    table = sd.get("y_embedder.embedding_table.weight")
    # Official class-conditional models trained with label dropout carry a null row.
    geo["num_classes"] = 0 if table is None else table.shape[0] - 1
    if pos is not None:
        side = math.isqrt(pos.shape[1])
        if side * side == pos.shape[1]:  # the official code only builds square grids
            geo["input_size"] = side * p
    return geo


def _registry_name(depth: int, hidden: int, patch: int) -> str | None:
    for name, (d, h, _, p) in REGISTRY.items():
        if (d, h, p) == (depth, hidden, patch):
            return name
    return None


def from_official(state_dict: Mapping[str, Any], name: str | None = None, **overrides: Any) -> DiT:
    """A ditlab DiT holding the weights of a facebookresearch/DiT state dict or checkpoint.

    ``name`` is a registry name (``"DiT-XL/2"``); left out, it is found from the shapes.
    Overrides (e.g. ``num_classes``, ``input_size``) win over what the shapes say. The load is
    all-or-nothing: missing, unexpected or mis-shaped tensors raise CheckpointError naming them.
    """
    sd = official_state_dict(state_dict)
    geo = infer_official_geometry(sd)
    if name is None:
        name = _registry_name(geo["depth"], geo["hidden_size"], geo["patch_size"])
        if name is None:
            raise CheckpointError(
                f"no registered model has depth {geo['depth']}, width {geo['hidden_size']}, patch "
                f"{geo['patch_size']}: pass the model name and num_heads explicitly"
            )
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(REGISTRY)}")
    depth, hidden, heads, patch = REGISTRY[name]
    fields: dict[str, Any] = dict(name=name, depth=depth, hidden_size=hidden, num_heads=heads,
                                  patch_size=patch)
    # Data-facing fields come from the file; the architecture comes from the name, so a file of
    # another size is reported as a shape mismatch instead of silently building another model.
    for key in ("in_channels", "num_classes", "learn_sigma", "input_size"):
        if key in geo:
            fields[key] = geo[key]
    fields.update({k: v for k, v in overrides.items() if v is not None})
    cfg = DiTConfig.from_dict(fields)
    with torch.device("meta"):
        model = DiT(cfg)
    # Every tensor is overwritten by the strict load (or nothing is), so skip initialising.
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, sd, source="official checkpoint")
    return model


def to_official(model: DiT) -> dict[str, Tensor]:
    """The model's weights in the facebookresearch/DiT layout (adaLN-Zero models only)."""
    cfg = model.config
    if (cfg.block != "adaLN-Zero" or cfg.qk_norm or cfg.num_classes == 0
            or cfg.timestep_freq_shift != 0 or cfg.timestep_scale != 1 or cfg.class_factors):
        raise ModelError(
            "the official DiT layout only holds class-conditional adaLN-Zero models with one label table, without "
            "qk-norm and with the paper's timestep sinusoid: export this model with save_pretrained instead"
        )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

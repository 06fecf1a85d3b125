"""Build models by name or from a saved config."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditlab.errors import ModelError
from ditlab.models import mmdit, uvit  # noqa: F401  (the designs with backbones of their own register here)
from ditlab.models.config import REGISTRY, DiTConfig, config_for
from ditlab.models.designs import DESIGN_MODELS, DESIGNS
from ditlab.models.dit import DiT


def _on(device: torch.device | str | None):
    return torch.device(device) if device is not None else contextlib.nullcontext()


def backbone_class(config: DiTConfig) -> type[nn.Module]:
    """The network class of a config: DiT for its block kinds, or the design's own backbone (MMDiT, U-ViT)."""
    return DESIGNS.get(config.block, DiT)


def create_model(name: str, *, device: torch.device | str | None = None, **overrides: Any) -> nn.Module:
    """A freshly initialised registered model, e.g. ``create_model("DiT-XL/2", input_size=32)``.

    Overrides are any ``DiTConfig`` field: ``input_size`` (int or (H, W)), ``in_channels``,
    ``num_classes`` (0 = unconditional), ``learn_sigma``, ``context_dim``, ``pooled_dim``, ``depth``,
    ``hidden_size``, ``num_heads``, ``patch_size``, ``mlp_ratio``, ``block``, ``qk_norm``,
    ``grad_checkpointing``, ``timestep_scale``; ``None`` values are ignored.
    ``device="meta"`` builds without memory (for counting parameters and flops).
    ``name`` may also be a path to a ``config.json`` or a directory holding one.
    """
    path = Path(name)
    if name not in REGISTRY and name not in DESIGN_MODELS and (path.suffix == ".json" or path.is_dir()):
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise ModelError(f"no config.json at {cfg_path}: pass a registered name or a saved model dir")
        d = json.loads(cfg_path.read_text())
        d.update({k: v for k, v in overrides.items() if v is not None})
        return model_from_config(d, device=device)
    cfg = config_for(name, **overrides)
    with _on(device):
        return backbone_class(cfg)(cfg)


def model_from_config(config: DiTConfig | dict[str, Any], *,
                      device: torch.device | str | None = None) -> nn.Module:
    """Rebuild the architecture described by ``model.config`` or ``model.config.to_dict()``."""
    cfg = config if isinstance(config, DiTConfig) else DiTConfig.from_dict(dict(config))
    with _on(device):
        return backbone_class(cfg)(cfg)

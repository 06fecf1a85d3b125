"""Native model files (``config.json`` + ``model.safetensors``)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ditlab.errors import CheckpointError
from ditlab.files import atomic_write, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *,
                    state_dict: dict[str, Tensor] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    ``state_dict`` replaces the model's own weights (e.g. EMA weights). Files are written under
    temporary names and renamed, so an interrupted save never leaves a half-written model.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt",
                                                                                       "library": "ditlab"}))
    atomic_write_json(out / CONFIG_NAME, model.config.to_dict())
    return out


def load_pretrained(directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from ``config.json`` and load ``model.safetensors`` strictly.

    Returns the model in eval mode (no label dropout), ready for inference; call ``.train()`` to train it.
    """
    from safetensors.torch import load_file

    from ditlab.models.registry import model_from_config

    src = Path(directory)
    cfg_path, w_path = src / CONFIG_NAME, src / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{src} is not a saved ditlab model: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(write one with save_pretrained or `ditlab convert`)"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({err}): re-save the model") from None
    model = model_from_config(config, device=device)
    try:
        sd = load_file(str(w_path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {w_path} ({err}): the file is corrupt, re-save it") from None
    load_state_dict_strict(model, sd, source=str(w_path))
    return model.eval()


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, Tensor], *, source: str = "checkpoint") -> None:
    """Load all-or-nothing: missing, unexpected or mis-shaped keys raise CheckpointError naming them."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointError(
            f"{source} does not match {getattr(getattr(model, 'config', None), 'name', 'the model')}: "
            f"{'; '.join(parts)}: pick the model config the checkpoint was trained with"
        )
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items() if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{source} has tensors of another shape ({_short(wrong)}, checkpoint vs model): "
            "pick the model size, patch, channels and classes it was trained with"
        )
    model.load_state_dict(state_dict, strict=True)


def _short(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"

"""Choosing the device a command runs on."""
from __future__ import annotations

import torch

from ditlab.errors import ConfigError


def pick_device(spec: str) -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else CPU; otherwise the named device, checked."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' asked for but CUDA is not available: use --device cpu")
    return device

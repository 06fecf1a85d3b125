"""Exponential moving average of model weights (the EMA model that DiT samples from)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """Decay used after ``step`` optimiser steps.

    With warm-up the decay is ``min(decay, (1 + step) / (10 + step))``: early on the average follows the
    weights closely, so a run of a few thousand steps already has a useful EMA model (with a fixed 0.9999,
    the first 10k steps would be dominated by the random initialisation).
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """Keeps ``shadow``, a frozen copy of a model whose parameters track an exponential average."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """shadow <- d * shadow + (1 - d) * model, for parameters; buffers are copied."""
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_params = [p for p in self.shadow.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

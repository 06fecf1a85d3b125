"""Argument checks shared by both processes."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ditlab.errors import ProcessError


def check_choice(what: str, value: str, choices) -> None:
    """Raise ProcessError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ProcessError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_sampler_options(sampler: str, options: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> dict:
    """The sampler's extra options (e.g. ``eta`` for ddim), rejecting unknown ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ProcessError(f"sampler {sampler!r} has no option(s) {unknown}; valid options: {valid}")
    return options


def split_output(out: Tensor, channels: int, learn_sigma: bool, kind: str) -> tuple[Tensor, Tensor | None]:
    """Split the network output into the prediction (C channels) and the variance values (C or None)."""
    want = 2 * channels if learn_sigma else channels
    if out.dim() < 2 or out.shape[1] != want:
        got = out.shape[1] if out.dim() >= 2 else "no"
        hint = "build the network with learn_sigma=process.learn_sigma"
        raise ProcessError(
            f"{kind} process with learn_sigma={learn_sigma} needs {want} output channels for "
            f"{channels}-channel inputs, the model gave {got}; {hint}"
        )
    if learn_sigma:
        return out[:, :channels], out[:, channels:]
    return out, None


def time_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the ``t`` handed to the network: float32 (exact for step indices and finer than
    bf16/fp16 data), or float64 for float64 data."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32

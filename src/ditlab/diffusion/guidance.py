"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any network.

The conditional and unconditional halves run in ONE batched forward (conditional first). Guidance
combines the prediction channels, out = uncond + s (cond - uncond); a learned-variance part, if the
network has one, is taken from the conditional half. ``guidance_channels=3`` guides only the first
3 channels, which reproduces the official DiT sampler exactly. A guidance interval (Kynkäänniemi et
al. 2024) applies guidance only where the normalised time lies inside [lo, hi]; elsewhere the
conditional prediction is used alone.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ditlab.errors import ProcessError

ModelFn = Callable[..., Tensor]


def check_guidance(
    cfg_scale: float,
    uncond_model_kwargs: Mapping[str, Any] | None,
    guidance_interval: tuple[float, float] | None,
    guidance_channels: int | None,
    channels: int,
) -> None:
    """Raise ProcessError for a negative scale, a missing null condition, a bad interval or channel count."""
    if not cfg_scale >= 0:
        raise ProcessError(f"cfg_scale must be >= 0, got {cfg_scale}; use 1 for no guidance, e.g. 4 for strong")
    if cfg_scale != 1.0 and uncond_model_kwargs is None:
        raise ProcessError(
            "cfg_scale != 1 needs uncond_model_kwargs (e.g. the null label y=num_classes); pass them or use cfg_scale=1"
        )
    if guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in guidance_interval)
        except (TypeError, ValueError):
            raise ProcessError(
                f"guidance_interval must be a pair (lo, hi), got {guidance_interval!r}; e.g. (0.0, 0.7)"
            ) from None
        if not (0.0 <= lo <= hi <= 1.0):
            raise ProcessError(
                f"guidance_interval {guidance_interval!r} must satisfy 0 <= lo <= hi <= 1; e.g. (0.0, 0.7)"
            )
    if guidance_channels is not None and not 1 <= int(guidance_channels) <= channels:
        raise ProcessError(
            f"guidance_channels must be in [1, {channels}], got {guidance_channels}; omit it to guide all channels"
        )


def _concat_kwargs(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    if set(cond) != set(uncond):
        raise ProcessError(
            f"model_kwargs keys {sorted(cond)} differ from uncond_model_kwargs keys {sorted(uncond)}; "
            "pass the same keys"
        )
    merged = {}
    for key, value in cond.items():
        other = uncond[key]
        if isinstance(value, Tensor):
            if not isinstance(other, Tensor) or other.shape[1:] != value.shape[1:]:
                raise ProcessError(f"uncond_model_kwargs[{key!r}] must be a tensor shaped like model_kwargs[{key!r}]")
            merged[key] = torch.cat([value, other.to(value.device)], dim=0)
        elif value is other or value == other:
            merged[key] = value  # a shared non-tensor option, e.g. a flag
        else:
            raise ProcessError(f"non-tensor model kwarg {key!r} differs between cond and uncond; make them equal")
    return merged


def classifier_free_guidance(
    model_fn: ModelFn,
    model_kwargs: Mapping[str, Any] | None,
    *,
    cfg_scale: float = 1.0,
    uncond_model_kwargs: Mapping[str, Any] | None = None,
    guidance_channels: int | None = None,
    guidance_interval: tuple[float, float] | None = None,
    normalized_time: Callable[[Tensor], Tensor] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """A function ``(x, t) -> out`` that evaluates ``model_fn`` with guidance.

    Args:
        model_fn: the network, ``model_fn(x, t, **kwargs) -> out`` with out (N, C or 2C, ...).
        model_kwargs / uncond_model_kwargs: conditional and null conditions (same keys).
        cfg_scale: guidance scale s; 1 means one plain conditional forward.
        guidance_channels: guide only the first this many channels (3 = official DiT).
        guidance_interval: (lo, hi) in normalised time; ``normalized_time(t)`` maps the network's t to [0, 1].
    """
    cond = dict(model_kwargs or {})
    if cfg_scale == 1.0:
        return lambda x, t: model_fn(x, t, **cond)
    both = _concat_kwargs(cond, dict(uncond_model_kwargs or {}))

    def guided(x: Tensor, t: Tensor) -> Tensor:
        n, channels = x.shape[0], x.shape[1]
        inside = None
        if guidance_interval is not None:
            tau = normalized_time(t) if normalized_time is not None else t
            inside = (tau >= guidance_interval[0]) & (tau <= guidance_interval[1])  # (N,)
            if not bool(inside.any()):
                return model_fn(x, t, **cond)  # one plain forward: no sample is guided at this time
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **both)  # (2N, C_out, ...)
        out_c, out_u = out[:n], out[n:]
        g = channels if guidance_channels is None else int(guidance_channels)
        g = min(g, out_c.shape[1])
        guided_part = out_u[:, :g] + cfg_scale * (out_c[:, :g] - out_u[:, :g])
        if inside is not None:
            mask = inside.reshape(-1, *([1] * (x.dim() - 1)))
            guided_part = torch.where(mask, guided_part, out_c[:, :g])
        return torch.cat([guided_part, out_c[:, g:]], dim=1)

    return guided

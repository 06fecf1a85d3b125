"""Per-sample randomness: each sample draws from its own ``torch.Generator``.

Results therefore do not depend on batch size, batch composition or device count. Usage::

    gens = per_sample_generators(seeds)
    noise = per_sample_noise((C, H, W), gens)          # advances each generator
    x0 = process.sample(model, noise, generators=gens)  # stochastic samplers continue the streams
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ditlab.errors import ProcessError


def per_sample_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed (CPU by default, so values are the same on every device)."""
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        gens.append(g)
    return gens


def per_sample_noise(
    shape: Sequence[int],
    seeds: Sequence[int] | Sequence[torch.Generator],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of shape (N, *shape); sample i comes from seeds[i].

    ``seeds`` holds ints (a fresh CPU generator is seeded with each) or generators (drawn from,
    which advances them).
    """
    gens = [s if isinstance(s, torch.Generator) else per_sample_generators([s])[0] for s in seeds]
    if not gens:
        raise ProcessError("per_sample_noise got no seeds; pass one seed per sample")
    noise = torch.stack([torch.randn(tuple(shape), generator=g, device=g.device) for g in gens])
    return noise.to(device=device if device is not None else noise.device, dtype=dtype)


def randn_like_per_sample(x: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
    """Noise shaped like ``x``: from ``generators[i]`` for sample i, or from torch's global RNG if None."""
    if generators is None:
        return torch.randn_like(x)
    if len(generators) != x.shape[0]:
        raise ProcessError(
            f"got {len(generators)} generators for a batch of {x.shape[0]}; pass one per sample"
        )
    noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generators])
    return noise.to(device=x.device, dtype=x.dtype)

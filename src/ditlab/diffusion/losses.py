"""Gaussian log-densities used by the variational bound (Ho et al. 2020, Sec. 3.3; Nichol & Dhariwal 2021)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one: (N, ...) -> (N,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log-probability of data ``x`` in [-1, 1] quantised to 256 bins under N(mean, e^(2 log_scale)).

    Each bin has width 2/255; the two edge bins extend to -inf and +inf (Ho et al. 2020, eq. 13).
    Uses the exact normal CDF.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    cdf_upper = torch.special.ndtr(upper)
    survival_lower = torch.special.ndtr(-lower)  # 1 - Phi(lower), without cancellation
    log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_survival_lower = torch.log(survival_lower.clamp(min=1e-12))
    log_delta = torch.log((cdf_upper - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_delta)
    )


LN2 = math.log(2.0)

"""Samplers for the Gaussian (DDPM) process, as stateless functions with one signature::

    sample_<name>(denoise, x, schedule, *, generators=None, callback=None, **options) -> x0

``denoise(x, k) -> Prediction`` evaluates the (guided) network at kept step k of ``schedule``
(a SpacedSchedule, k = K-1 ... 0); every sampler makes exactly K network evaluations. The last step
goes from step 0 to clean data (alpha = 1, sigma = 0).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ditlab.diffusion.noise import randn_like_per_sample
from ditlab.diffusion.schedules import SpacedSchedule


class Prediction(NamedTuple):
    """What the network says about x_t at one step: clean data, noise, and the reverse-step log-variance."""

    x0: Tensor
    eps: Tensor
    log_variance: Tensor  # (N, C, ...) or broadcastable


Denoiser = Callable[[Tensor, int], Prediction]
Callback = Callable[[int, int], None] | None


def _steps_down(schedule: SpacedSchedule):
    K = schedule.num_steps
    for i, k in enumerate(range(K - 1, -1, -1)):
        yield i, k, K


def sample_ddpm(
    denoise: Denoiser,
    x: Tensor,
    schedule: SpacedSchedule,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral sampling: x_{k-1} ~ N(posterior mean of (x0_hat, x_k), model variance) (Ho et al. Alg. 2)."""
    for i, k, K in _steps_down(schedule):
        pred = denoise(x, k)
        mean = (
            float(schedule.posterior_mean_coef1[k]) * pred.x0
            + float(schedule.posterior_mean_coef2[k]) * x
        )
        # the last step returns the mean, without noise
        x = (mean + torch.exp(0.5 * pred.log_variance) * randn_like_per_sample(x, generators)) if k > 0 else mean
        if callback is not None:
            callback(i, K)
    return x


def ddim_step(
    x0: Tensor, eps: Tensor, alpha_bar: float, alpha_bar_prev: float, eta: float = 0.0, noise: Tensor | None = None
) -> Tensor:
    """One DDIM update from alpha_bar to alpha_bar_prev (Song et al. 2021, eq. 12)."""
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * math.sqrt(1 - alpha_bar / alpha_bar_prev)
    direction = math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
    out = math.sqrt(alpha_bar_prev) * x0 + direction
    if sigma > 0:
        out = out + sigma * noise
    return out


def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    schedule: SpacedSchedule,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (eta = 0: deterministic ODE-like sampler; eta = 1: ancestral-like)."""
    for i, k, K in _steps_down(schedule):
        pred = denoise(x, k)
        ab, ab_prev = float(schedule.alphas_cumprod[k]), float(schedule.alphas_cumprod_prev[k])
        noise = randn_like_per_sample(x, generators) if (eta > 0 and k > 0) else None
        x = ddim_step(pred.x0, pred.eps, ab, ab_prev, eta, noise)
        if callback is not None:
            callback(i, K)
    return x


def _alpha_sigma_lambda(alpha_bar: float) -> tuple[float, float, float]:
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def dpmpp_2m_step(
    x: Tensor,
    x0: Tensor,
    x0_prev: Tensor | None,
    alpha_bar_s: float,
    alpha_bar_t: float,
    alpha_bar_prev_s: float | None,
) -> Tensor:
    """One DPM-Solver++(2M) update from alpha_bar_s to alpha_bar_t (Lu et al. 2022b, Alg. 2, midpoint form).

    ``x0_prev`` is the data prediction at the previous (noisier) step ``alpha_bar_prev_s``; None gives the
    first-order update (DDIM). alpha_bar_t = 1 means the clean endpoint, where the update is x0.
    """
    if alpha_bar_t >= 1.0:
        return x0
    alpha_s, sigma_s, lam_s = _alpha_sigma_lambda(alpha_bar_s)
    alpha_t, sigma_t, lam_t = _alpha_sigma_lambda(alpha_bar_t)
    h = lam_t - lam_s
    d = x0
    if x0_prev is not None:
        r = (lam_s - _alpha_sigma_lambda(alpha_bar_prev_s)[2]) / h
        d = x0 + 0.5 * (x0 - x0_prev) / r
    return (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * d


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    schedule: SpacedSchedule,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(2M), multistep second order in log-SNR time; first order at the first and last step."""
    x0_prev, ab_prev_s = None, None
    for i, k, K in _steps_down(schedule):
        pred = denoise(x, k)
        ab_s, ab_t = float(schedule.alphas_cumprod[k]), float(schedule.alphas_cumprod_prev[k])
        x = dpmpp_2m_step(x, pred.x0, x0_prev, ab_s, ab_t, ab_prev_s)
        x0_prev, ab_prev_s = pred.x0, ab_s
        if callback is not None:
            callback(i, K)
    return x


GAUSSIAN_SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}

"""Samplers, written once against the Process protocol (``process.py``), as stateless functions::

    sample_<name>(denoise, x, grid, *, generators=None, callback=None, **options) -> x0

``x`` is the initial noise at level 0 of ``grid`` (a SamplingGrid: levels i = 0 .. n from noise to clean
data, x_i = alpha_i x0 + sigma_i eps); ``denoise(x, i) -> Prediction`` evaluates the (guided) network at
level i. Every sampler takes n steps, one network evaluation each (Heun: two, except into clean data
where the network has no time), calls ``callback(i, n, x, x0_hat)`` after step i with the new state and
the step's data prediction, and never catches what the callback raises. ``SAMPLERS`` maps names to
(function, option names); ``run_sampler`` is the body of every ``process.sample``.

Coordinates: after rescaling, every process is a rectified flow: y = x / s = (1 - tau) x0 + tau eps with
s = alpha + sigma and tau = sigma / s in [0, 1] (flow: s = 1, y = x, tau = t). The probability-flow ODE
is dy/dtau = eps_hat - x0_hat (``Prediction.ode_velocity``; flow: the network's v itself), solved from
tau ~ 1 down to 0. As (1 - tau) and tau are affine in tau, the paths of a point mass are straight and
Euler's step lands on alpha' x0_hat + sigma' eps_hat: Euler = DDIM(eta = 0) on every process.
EDM's coordinates (x / alpha, sigma / alpha) were measured and not used: on DDPM's schedules sigma /
alpha reaches 157 (linear) and 2.0e4 (cosine) at t = T - 1, and Heun's correction over the first step
from there, or Euler-Maruyama's, blew up on the cosine schedule (relative std error 84 at 10 steps)
where in (y, tau), with tau <= 1, they converge at their order (docs/samplers.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ditlab.diffusion.common import check_sampler_options, time_dtype
from ditlab.diffusion.guidance import check_guidance, classifier_free_guidance
from ditlab.diffusion.noise import randn_like_per_sample
from ditlab.diffusion.process import Callback, Denoiser, Prediction, Process, SamplingGrid
from ditlab.errors import ProcessError


def log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma), -inf at pure noise (alpha = 0), +inf at clean data (sigma = 0)."""
    if alpha <= 0.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def _check_nonnegative(name: str, value: float) -> None:
    if not value >= 0:
        raise ProcessError(f"sampler option {name} must be >= 0, got {value}; e.g. {name}=1.0")


def _ode_step(x: Tensor, u: Tensor, s: float, s_next: float, tau: float, tau_next: float) -> Tensor:
    """One Euler step of dy/dtau = u in y = x / s: x' = s' (x / s + (tau' - tau) u) (scales of 1 skipped)."""
    y = x if s == 1.0 else x / s
    y = y + (tau_next - tau) * u
    return y if s_next == 1.0 else s_next * y


def sample_ddpm(
    denoise: Denoiser,
    x: Tensor,
    grid: SamplingGrid,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) down the grid's Markov chain:

        x_{i+1} = c0_i x0_hat + c1_i x_i + exp(log_var_i / 2) z,   z ~ N(0, I),

    the mean of the posterior q(x_{i+1} | x_i, x0 = x0_hat) (``grid.posterior_x0 / posterior_x``) plus the
    process's reverse-step variance (DDPM: learned range, Nichol & Dhariwal eq. 15, or the fixed beta).
    The last step, into sigma = 0, returns the mean without noise. Needs ``Prediction.log_variance``.
    """
    n = grid.num_steps
    c0, c1, sigmas = grid.posterior_x0.tolist(), grid.posterior_x.tolist(), grid.sigmas.tolist()
    for i in range(n):
        pred = denoise(x, i)
        if pred.log_variance is None:
            raise ValueError("sample_ddpm needs a process that predicts the reverse-step variance")
        mean = c0[i] * pred.x0 + c1[i] * x
        if sigmas[i + 1] > 0:
            x = mean + torch.exp(0.5 * pred.log_variance) * randn_like_per_sample(x, generators)
        else:
            x = mean
        if callback is not None:
            callback(i, n, x, pred.x0)
    return x


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    alpha: float,
    sigma: float,
    alpha_next: float,
    sigma_next: float,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM update from (alpha, sigma) to (alpha', sigma') (Song et al. 2021, eq. 12, for any alpha, sigma):

        x' = alpha' x0_hat + sqrt(sigma'^2 - s^2) eps_hat + s z,
        s = eta sigma' sqrt(1 - e^{-2h}),  e^{-h} = (alpha sigma') / (alpha' sigma),  h = lambda' - lambda,

    where s^2 (eta = 1) is the variance of the posterior q(x' | x, x0). eta = 0 is deterministic; at
    pure noise (alpha = 0) e^{-h} = 0, and into clean data (sigma' = 0) the step returns x0_hat.
    """
    s = 0.0
    if eta > 0 and sigma_next > 0:
        r = (alpha * sigma_next) / (alpha_next * sigma)
        s = eta * sigma_next * math.sqrt(max(1.0 - r * r, 0.0))
    direction = (sigma_next if s == 0.0 else math.sqrt(max(sigma_next**2 - s**2, 0.0))) * eps
    out = alpha_next * x0 + direction
    if s > 0:
        out = out + s * noise
    return out


def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    grid: SamplingGrid,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (``ddim_step``): eta = 0 is the deterministic sampler (first order on the probability-flow
    ODE; equal to ``sample_euler`` in the grid's coordinates), eta = 1 draws from the posterior (like DDPM
    with the small variance)."""
    _check_nonnegative("eta", eta)
    n = grid.num_steps
    alphas, sigmas = grid.alphas.tolist(), grid.sigmas.tolist()
    for i in range(n):
        pred = denoise(x, i)
        noise = randn_like_per_sample(x, generators) if (eta > 0 and sigmas[i + 1] > 0) else None
        x = ddim_step(pred.x0, pred.eps, alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1], eta, noise)
        if callback is not None:
            callback(i, n, x, pred.x0)
    return x


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    grid: SamplingGrid,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), multistep second order in the log-SNR lambda = log(alpha/sigma):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} expm1(-h_i) D_i,   h_i = lambda_{i+1} - lambda_i,
        D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i),   r_i = (lambda_i - lambda_{i-1}) / h_i,

    with D_0 = x0_0 (first order, = DDIM). Endpoints: at pure noise (flow t = 1, alpha = 0) lambda = -inf,
    h = inf and the step is exactly alpha' x0_hat + sigma' x (DDIM from noise); the step after it has
    r = inf and is first order too (no finite slope to extrapolate). Into clean data (sigma = 0,
    lambda = +inf) the step returns x0_hat, first order.
    """
    n = grid.num_steps
    alphas, sigmas = grid.alphas.tolist(), grid.sigmas.tolist()
    lam = [log_snr(a, s) for a, s in zip(alphas, sigmas, strict=True)]
    x0_prev: Tensor | None = None
    for i in range(n):
        pred = denoise(x, i)
        x0 = pred.x0
        if sigmas[i + 1] <= 0.0:
            x = x0
        else:
            h = lam[i + 1] - lam[i]
            d = x0
            if x0_prev is not None and math.isfinite(lam[i - 1]):
                r = (lam[i] - lam[i - 1]) / h
                d = x0 + 0.5 * (x0 - x0_prev) / r
            x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * math.expm1(-h) * d
        x0_prev = x0
        if callback is not None:
            callback(i, n, x, x0)
    return x


def sample_euler(
    denoise: Denoiser,
    x: Tensor,
    grid: SamplingGrid,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE in the grid's coordinates (y = x / s, tau = sigma / s):

        y_{i+1} = y_i + (tau_{i+1} - tau_i) u_i,   u_i = dy/dtau = eps_hat - x0_hat (Prediction.ode_velocity),

    first order. It equals DDIM(eta = 0) on every process (module doc); on flow (s = 1, tau = t, u = v) it
    is x_{i+1} = x_i + (t_{i+1} - t_i) v.
    """
    n = grid.num_steps
    scales, taus = grid.scales.tolist(), grid.taus.tolist()
    for i in range(n):
        pred = denoise(x, i)
        x = _ode_step(x, pred.ode_velocity(), scales[i], scales[i + 1], taus[i], taus[i + 1])
        if callback is not None:
            callback(i, n, x, pred.x0)
    return x


def sample_heun(
    denoise: Denoiser,
    x: Tensor,
    grid: SamplingGrid,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Heun's method (explicit trapezoid, second order; EDM Alg. 1 without churn) in the grid's coordinates:

        y_e = y_i + h u_i,   y_{i+1} = y_i + h (u_i + u(y_e, tau_{i+1})) / 2,   h = tau_{i+1} - tau_i.

    Two evaluations per step. Into clean data the correction needs the network at sigma = 0: flow has
    it (t = 0), DDPM does not, so DDPM's last step is an Euler step (as EDM and k-diffusion do at
    sigma = 0). On flow this is Heun in (x, t) on the velocity.
    """
    n = grid.num_steps
    scales, taus = grid.scales.tolist(), grid.taus.tolist()
    for i in range(n):
        pred = denoise(x, i)
        s, s_next, h = scales[i], scales[i + 1], taus[i + 1] - taus[i]
        if grid.can_evaluate(i + 1):
            u = pred.ode_velocity()
            y = x if s == 1.0 else x / s
            y_euler = y + h * u
            x_euler = y_euler if s_next == 1.0 else s_next * y_euler
            y = y + 0.5 * h * (u + denoise(x_euler, i + 1).ode_velocity())
            x = y if s_next == 1.0 else s_next * y
        else:
            x = _ode_step(x, pred.ode_velocity(), s, s_next, taus[i], taus[i + 1])
        if callback is not None:
            callback(i, n, x, pred.x0)
    return x


def sample_euler_maruyama(
    denoise: Denoiser,
    x: Tensor,
    grid: SamplingGrid,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
    noise_scale: float = 1.0,
) -> Tensor:
    """Euler-Maruyama on a reverse-time SDE with the ODE's marginals, in the grid's coordinates.

    With diffusion g(tau)^2 = 2 c tau (c = ``noise_scale``; c = 0 is Euler) the reverse SDE is
    dy = [u - (g^2 / 2) score] dtau + g dW_bar; since y = (1 - tau) x0 + tau eps the score of y is
    -eps_hat / tau, so (g^2 / 2) score = -c eps_hat stays bounded as tau -> 0. With h = tau_i - tau_{i+1} > 0:

        y_{i+1} = y_i - h (u_i + c eps_hat_i) + sqrt(2 c tau_i h) z,   z ~ N(0, I).

    On flow (y = x, tau = t) this is the SDE with g(t)^2 = 2 c t; on DDPM the same SDE in the rescaled
    coordinates. First order (weak). The last step, into clean data, is the deterministic Euler step
    (the denoised mean).
    """
    _check_nonnegative("noise_scale", noise_scale)
    n = grid.num_steps
    scales, taus, sigmas = grid.scales.tolist(), grid.taus.tolist(), grid.sigmas.tolist()
    for i in range(n):
        pred = denoise(x, i)
        s, s_next, tau = scales[i], scales[i + 1], taus[i]
        if sigmas[i + 1] > 0:
            h = tau - taus[i + 1]  # > 0: the step in reverse time
            y = x if s == 1.0 else x / s
            drift = -pred.ode_velocity() - noise_scale * pred.eps
            y = y + h * drift + (2.0 * noise_scale * tau * h) ** 0.5 * randn_like_per_sample(x, generators)
            x = y if s_next == 1.0 else s_next * y
        else:
            x = _ode_step(x, pred.ode_velocity(), s, s_next, tau, taus[i + 1])
        if callback is not None:
            callback(i, n, x, pred.x0)
    return x


class SamplerSpec(NamedTuple):
    """A sampler function and the names of its options (``sampler_options=``)."""

    fn: Callable[..., Tensor]
    options: tuple[str, ...]


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(sample_ddpm, ()),
    "ddim": SamplerSpec(sample_ddim, ("eta",)),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, ()),
    "euler": SamplerSpec(sample_euler, ()),
    "heun": SamplerSpec(sample_heun, ()),
    "euler_maruyama": SamplerSpec(sample_euler_maruyama, ("noise_scale",)),
}


def check_sampler(process: Process, sampler: str) -> None:
    """ProcessError, one line listing the valid names, when ``process`` cannot run ``sampler``."""
    if sampler in process.samplers:
        return
    valid = ", ".join(process.samplers)
    if sampler in SAMPLERS:
        raise ProcessError(f"sampler {sampler!r} cannot run the {process.kind} process; choose one of {valid}")
    raise ProcessError(f"unknown sampler {sampler!r} for {process.kind}; choose one of {valid}")


def run_sampler(
    process: Process,
    model_fn: Callable[..., Tensor],
    noise: Tensor,
    *,
    sampler: str | None,
    steps: int | str,
    model_kwargs: Mapping[str, Any] | None,
    cfg_scale: float,
    uncond_model_kwargs: Mapping[str, Any] | None,
    guidance_interval: tuple[float, float] | None,
    guidance_channels: int | None,
    generators: Sequence[torch.Generator] | None,
    callback: Callback,
    sampler_options: Mapping[str, Any] | None,
) -> Tensor:
    """The body of ``process.sample``: check the request, build the grid and the guided denoiser, run.

    ``callback(i, n, x, x0_hat)`` is called after every solver step i = 0 .. n-1 with the new state x and
    the step's (guided) data prediction x0_hat; to stop, raise from it (nothing here catches it).
    """
    sampler = sampler or process.default_sampler
    check_sampler(process, sampler)
    fn, allowed = SAMPLERS[sampler]
    options = check_sampler_options(sampler, sampler_options, allowed)
    check_guidance(cfg_scale, uncond_model_kwargs, guidance_interval, guidance_channels, noise.shape[1])
    grid = process.sampling_grid(steps, sampler)
    guided = classifier_free_guidance(
        model_fn,
        model_kwargs,
        cfg_scale=cfg_scale,
        uncond_model_kwargs=uncond_model_kwargs,
        guidance_channels=guidance_channels,
        guidance_interval=guidance_interval,
        normalized_time=process.normalized_time,
    )
    dtype = time_dtype(noise)

    def denoise(x: Tensor, i: int) -> Prediction:
        t = torch.full((x.shape[0],), grid.time(i), device=x.device, dtype=dtype)
        return process.predict_at(guided(x, t), x, grid, i)

    return fn(denoise, noise, grid, generators=generators, callback=callback, **options)

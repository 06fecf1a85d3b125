"""Gaussian diffusion (DDPM): forward chain, posterior, eps/x0/v parameterisations, learned-range
variance and the hybrid L_simple + L_vlb objective (Ho et al. 2020; Nichol & Dhariwal 2021, the
objective DiT trains with).

Time: ``t`` counts noise steps, 0 = clean (after one step of noise) ... T-1 = almost pure noise.
The network always sees the original step index as a float, also when sampling with fewer steps.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ditlab.diffusion.common import check_choice, split_output, time_dtype
from ditlab.diffusion.losses import LN2, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from ditlab.diffusion.process import Callback, Prediction, SamplingGrid
from ditlab.diffusion.samplers import run_sampler
from ditlab.diffusion.schedules import (
    SCHEDULES,
    SpacedSchedule,
    beta_schedule,
    extract,
    linspace_timesteps,
    logsnr_timesteps,
    power_timesteps,
    space_timesteps,
)
from ditlab.errors import ProcessError

PREDICTIONS = ("eps", "x0", "v")


class GaussianProcess:
    """The DDPM process. Build it with ``create_process("ddpm", ...)``.

    Args:
        schedule: ``linear`` (DiT), ``cosine`` or ``scaled_linear``.
        num_timesteps: T, the number of noise steps (1000).
        prediction: what the network predicts: ``eps``, ``x0`` or ``v`` (= alpha eps - sigma x0).
        learn_sigma: the network also outputs C channels v in [-1, 1] that interpolate the reverse
            log-variance between log beta_t (v = 1) and the clipped log posterior variance (v = -1).
    """

    kind = "ddpm"
    samplers = ("ddpm", "ddim", "dpmpp_2m", "euler", "heun", "euler_maruyama")
    default_sampler = "ddpm"

    def __init__(
        self, schedule: str = "linear", num_timesteps: int = 1000, prediction: str = "eps", learn_sigma: bool = True
    ):
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("prediction", prediction, PREDICTIONS)
        self.schedule = schedule
        self.num_timesteps = int(num_timesteps)
        self.prediction = prediction
        self.learn_sigma = bool(learn_sigma)
        self.betas = beta_schedule(schedule, self.num_timesteps)  # (T,) float64
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.full = SpacedSchedule.from_alphas_cumprod(self.alphas_cumprod, list(range(self.num_timesteps)))

    def to_dict(self) -> dict[str, Any]:
        """Options that rebuild this process with ``create_process(**d)``."""
        return {
            "kind": self.kind,
            "schedule": self.schedule,
            "num_timesteps": self.num_timesteps,
            "prediction": self.prediction,
            "learn_sigma": self.learn_sigma,
        }

    def __repr__(self) -> str:
        return f"GaussianProcess({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items() if k != 'kind')})"

    # ----- forward process -----
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, t (N,) original indices."""
        ab = extract(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, k: Tensor, schedule: SpacedSchedule | None = None):
        """Mean, variance and clipped log-variance of q(x_{k-1} | x_k, x0) (Ho et al. eqs. 6-7)."""
        s = schedule or self.full
        mean = extract(s.posterior_mean_coef1, k, x_t) * x0 + extract(s.posterior_mean_coef2, k, x_t) * x_t
        return mean, extract(s.posterior_variance, k, x_t), extract(s.posterior_log_variance_clipped, k, x_t)

    def training_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The regression target of the chosen parameterisation."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        ab = extract(self.alphas_cumprod, t, x0)
        return ab.sqrt() * noise - (1.0 - ab).sqrt() * x0  # v (Salimans & Ho 2022)

    # ----- reverse process -----
    def predict(self, out: Tensor, x_t: Tensor, k: Tensor, schedule: SpacedSchedule | None = None) -> Prediction:
        """Turn the raw network output at kept step k of ``schedule`` into (x0, eps, log-variance)."""
        s = schedule or self.full
        model_out, var_values = split_output(out, x_t.shape[1], self.learn_sigma, self.kind)
        ab = extract(s.alphas_cumprod, k, x_t)
        a, sig = ab.sqrt(), (1.0 - ab).sqrt()
        if self.prediction == "eps":
            eps = model_out
            x0 = (x_t - sig * eps) / a
        elif self.prediction == "x0":
            x0 = model_out
            eps = (x_t - a * x0) / sig
        else:
            x0 = a * x_t - sig * model_out
            eps = sig * x_t + a * model_out
        if var_values is None:
            log_var = extract(s.log_betas_fixed_large, k, x_t).expand_as(x_t)
        else:
            # Learned range (Nichol & Dhariwal eq. 15): interpolate in log space between the bounds.
            min_log = extract(s.posterior_log_variance_clipped, k, x_t)
            max_log = extract(s.betas, k, x_t).log()
            frac = (var_values + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
        return Prediction(x0, eps, log_var)

    def vlb_terms(self, pred: Prediction, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term in bits per dimension: KL(q || p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        model_mean, _, _ = self.q_posterior(pred.x0, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, pred.log_variance)) / LN2
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * pred.log_variance)) / LN2
        return torch.where(t == 0, nll, kl)

    def sample_t(
        self, n: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training steps (n,) uniform over [0, T), as ``training_loss`` draws them when not given."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def training_loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Per-sample loss (N,): MSE on the target, plus the VLB term (stop-gradient mean) with learned sigma.

        ``t`` (uniform over [0, T)) and ``noise`` are drawn from torch's global RNG unless given.
        """
        n = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (n,), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        t = t.to(x0.device).long()
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t.to(time_dtype(x0)), **dict(model_kwargs or {}))
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # the loss in >= fp32 under autocast
        model_out, var_values = split_output(out, x0.shape[1], self.learn_sigma, self.kind)
        loss = mean_flat((self.training_target(x0, t, noise) - model_out) ** 2)
        if self.learn_sigma:
            # L_vlb trains only the variance: the mean's gradient comes from L_simple alone.
            frozen = torch.cat([model_out.detach(), var_values], dim=1)
            loss = loss + self.vlb_terms(self.predict(frozen, x_t, t), x0, x_t, t)
        return loss

    # ----- sampling -----
    def spaced(self, steps: int | str, sampler: str = "ddpm") -> SpacedSchedule:
        """The chain a sampler runs on, with one network evaluation per kept step.

        ``steps`` is an int or a spacing string: ADM's ``"250"``, ``"10,20"``, ``"ddim50"`` (as DiT/ADM);
        ``"linspace20"`` (diffusers' default: round(linspace(0, T-1, n+1))[1:]); ``"logsnr20"`` (uniform
        in log-SNR); ``"quad20"`` / ``"cubic20"`` (t = (T-1)(i/n)^2 or ^3). An int picks the sampler's
        default: ADM for ``ddpm`` (so ``250`` reproduces DiT), linspace for ``ddim`` and ``euler`` (so
        they take the same steps), and where measured best on the analytic data (docs/samplers.md):
        ``dpmpp_2m`` cubic (linear / scaled_linear) or linspace (cosine), ``heun`` quad or ADM (cosine),
        ``euler_maruyama`` quad.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, str)):
            raise ProcessError(
                f"steps must be an int or a spacing string like '250', 'ddim50', 'cubic20', got {steps!r}"
            )
        T = self.num_timesteps
        spec = steps if isinstance(steps, str) else f"{self._default_spacing(sampler)}{steps}"
        spec = spec.strip()
        spacings = {
            "linspace": lambda n: linspace_timesteps(T, n),
            "logsnr": lambda n: logsnr_timesteps(self.alphas_cumprod, n),
            "quad": lambda n: power_timesteps(T, n, 2.0),
            "cubic": lambda n: power_timesteps(T, n, 3.0),
        }
        name = spec.rstrip("0123456789")
        if name in spacings:
            try:
                n = int(spec[len(name):])
            except ValueError:
                raise ProcessError(f"bad spacing {spec!r}; use e.g. '{name}20'") from None
            if not 1 <= n <= T:
                raise ProcessError(f"steps must be in [1, {T}], got {n}; pass fewer steps")
            kept = spacings[name](n)
            if len(kept) < n:  # more steps than distinct rounded points: fall back to even spacing
                kept = space_timesteps(T, n)
        else:
            if isinstance(steps, int) and not 1 <= steps <= T:
                raise ProcessError(f"steps must be in [1, {T}], got {steps}; pass fewer steps")
            kept = space_timesteps(T, spec)
        return SpacedSchedule.from_alphas_cumprod(self.alphas_cumprod, kept)

    def _default_spacing(self, sampler: str) -> str:
        # Measured on Gaussian data and the 2-D mixture (docs/samplers.md).
        cosine = self.schedule == "cosine"
        if sampler == "ddpm" or (sampler == "heun" and cosine):
            return ""  # ADM's even spacing: "250"
        if sampler in ("heun", "euler_maruyama"):
            return "quad"
        if sampler == "dpmpp_2m" and not cosine:
            return "cubic"
        return "linspace"

    def normalized_time(self, t: Tensor) -> Tensor:
        """Original step index -> [0, 1] (t / (T - 1)), the scale of guidance intervals."""
        return t / max(self.num_timesteps - 1, 1)

    def sampling_grid(self, steps: int | str, sampler: str | None = None) -> SamplingGrid:
        """The kept steps of ``spaced(steps, sampler)`` from the noisiest down, then clean data.

        Level i < n is kept step k = n-1-i: network time = its original index, alpha = sqrt(alpha_bar_k),
        sigma = sqrt(1 - alpha_bar_k); level n is clean data (alpha 1, sigma 0), where the network is not
        evaluated. ODE scale s = alpha + sigma. The posterior coefficients and the chain (for the reverse
        variances) are the respaced chain's own tables.
        """
        chain = self.spaced(steps, sampler or self.default_sampler)
        acp = chain.alphas_cumprod.flip(0).tolist()  # (n,) noisiest first
        # math.sqrt is correctly rounded; torch's float64 sqrt can differ in the last bit.
        alphas = torch.tensor([math.sqrt(ab) for ab in acp] + [1.0], dtype=torch.float64)  # (n + 1,)
        sigmas = torch.tensor([math.sqrt(1.0 - ab) for ab in acp] + [0.0], dtype=torch.float64)
        return SamplingGrid(
            times=chain.timesteps.flip(0).to(torch.float64),
            alphas=alphas,
            sigmas=sigmas,
            scales=alphas + sigmas,
            posterior_x0=chain.posterior_mean_coef1.flip(0),
            posterior_x=chain.posterior_mean_coef2.flip(0),
            end_time=None,
            chain=chain,
        )

    def predict_at(self, out: Tensor, x: Tensor, grid: SamplingGrid, i: int) -> Prediction:
        """``predict`` at level i of a grid from ``sampling_grid`` (kept step n-1-i of its chain); the ODE
        velocity is left to ``Prediction.ode_velocity`` (eps_hat - x0_hat), computed only where used."""
        k = torch.full((x.shape[0],), grid.num_steps - 1 - i, dtype=torch.long, device=x.device)  # see extract()
        return self.predict(out, x, k, grid.chain)

    def sample(
        self,
        model_fn: Callable[..., Tensor],
        noise: Tensor,
        *,
        sampler: str | None = None,
        steps: int | str = 50,
        model_kwargs: Mapping[str, Any] | None = None,
        cfg_scale: float = 1.0,
        uncond_model_kwargs: Mapping[str, Any] | None = None,
        guidance_interval: tuple[float, float] | None = None,
        guidance_channels: int | None = None,
        generators: Sequence[torch.Generator] | None = None,
        callback: Callback = None,
        sampler_options: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """Generate x0 from ``noise`` (N, C, ...) in ``steps`` solver steps (an int or a spacing string, see
        ``spaced``); one network evaluation per step (heun: two, one on the last step).

        ``sampler``: one of ``samplers`` (default ``ddpm``); ``sampler_options``: ``{"eta": float}`` for
        ddim, ``{"noise_scale": float}`` for euler_maruyama. ``callback(i, n, x, x0_hat)`` runs after every
        step (i = 0 .. n-1) with the new state and the step's guided data prediction; raise from it to stop.
        ``generators``: one per sample for the stochastic samplers' noise (None: torch's global RNG).
        """
        return run_sampler(
            self,
            model_fn,
            noise,
            sampler=sampler,
            steps=steps,
            model_kwargs=model_kwargs,
            cfg_scale=cfg_scale,
            uncond_model_kwargs=uncond_model_kwargs,
            guidance_interval=guidance_interval,
            guidance_channels=guidance_channels,
            generators=generators,
            callback=callback,
            sampler_options=sampler_options,
        )

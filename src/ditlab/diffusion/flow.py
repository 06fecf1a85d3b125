"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022; SD3, Esser et al. 2024).

Path x_t = (1 - t) x0 + t eps with t in [0, 1] (0 = data, 1 = noise, as SD3); the network predicts
the velocity v = eps - x0 and sees t itself (a float in [0, 1]).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ditlab.diffusion.common import check_choice, split_output, time_dtype
from ditlab.diffusion.losses import mean_flat
from ditlab.diffusion.process import Callback, Prediction, SamplingGrid, posterior_coefficients
from ditlab.diffusion.samplers import run_sampler
from ditlab.errors import ProcessError

TIME_SAMPLINGS = ("uniform", "logit_normal", "mode")


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's resolution shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23); s > 1 spends more time
    near noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


class FlowProcess:
    """The rectified-flow process. Build it with ``create_process("flow", ...)``.

    Args:
        time_sampling: training-time density of t: ``uniform``, ``logit_normal`` (SD3: sigmoid of
            N(logit_mean, logit_std^2)) or ``mode`` (SD3 eq. 20 with ``mode_scale``).
        shift: SD3 timestep shift, applied to the training t and to the sampling grid (1 = none).
        shift_base: resolution-dependent shift (SD3 eq. 23; Flux likewise grows it with the token count):
            ``shift`` holds for latents of ``shift_base`` x ``shift_base`` elements, and latents of h x w use
            ``shift * sqrt(h * w / shift_base**2)`` (0 = the same shift at every resolution). The times of
            ``sample_t`` are then at the base resolution; ``training_loss`` and ``sample`` move them to the
            resolution of their tensors (shift maps compose: the odds t / (1 - t) multiply).
    """

    kind = "flow"
    samplers = ("euler", "heun", "euler_maruyama", "ddim", "dpmpp_2m")
    default_sampler = "euler"
    learn_sigma = False

    def __init__(
        self,
        time_sampling: str = "logit_normal",
        shift: float = 1.0,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        shift_base: int = 0,
    ):
        check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
        if isinstance(shift_base, bool) or not isinstance(shift_base, int) or shift_base < 0:
            raise ProcessError(f"shift_base must be an int >= 0 (a latent side; 0 = no resolution shift), "
                               f"got {shift_base!r}")
        if not shift > 0:
            raise ProcessError(f"shift must be > 0, got {shift}; use 1.0 for no shift, e.g. 3.0 for 1024 px")
        if not logit_std > 0:
            raise ProcessError(f"logit_std must be > 0, got {logit_std}; SD3 uses 1.0")
        if not -1.0 <= mode_scale <= 2.0 / (math.pi - 2.0):
            raise ProcessError(
                f"mode_scale must be in [-1, {2 / (math.pi - 2):.3f}] to keep t in [0, 1], got {mode_scale}"
            )
        self.time_sampling = time_sampling
        self.shift = float(shift)
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.mode_scale = float(mode_scale)
        self.shift_base = shift_base

    def shift_for(self, shape: Sequence[int]) -> float:
        """The shift at latents of ``shape`` (..., h, w): ``shift`` scaled by sqrt(h w / shift_base^2) when
        ``shift_base`` is set (SD3's resolution-dependent shift), else ``shift``."""
        if not self.shift_base:
            return self.shift
        return self.shift * math.sqrt(shape[-2] * shape[-1] / self.shift_base**2)

    def to_dict(self) -> dict[str, Any]:
        """Options that rebuild this process with ``create_process(**d)``."""
        return {
            "kind": self.kind,
            "time_sampling": self.time_sampling,
            "shift": self.shift,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
            "mode_scale": self.mode_scale,
            "shift_base": self.shift_base,
        }

    def __repr__(self) -> str:
        return f"FlowProcess({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items() if k != 'kind')})"

    def sample_t(
        self, n: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training times (n,) in [0, 1], shifted; from ``generator`` or else torch's global RNG."""
        if self.time_sampling == "uniform":
            t = torch.rand(n, device=device, generator=generator)
        elif self.time_sampling == "logit_normal":
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, device=device, generator=generator))
        else:  # SD3 eq. 20: f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)
            u = torch.rand(n, device=device, generator=generator)
            t = 1.0 - u - self.mode_scale * (torch.cos(math.pi / 2 * u) ** 2 - 1.0 + u)
        return shift_time(t, self.shift)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = (1 - t) x0 + t noise with t (N,)."""
        t = t.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return (1.0 - t) * x0 + t * noise

    def training_loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Per-sample velocity MSE (N,); ``t`` and ``noise`` from torch's global RNG unless given."""
        if t is None:
            t = self.sample_t(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        t = t.to(device=x0.device, dtype=time_dtype(x0))
        if self.shift_base:  # from the base resolution's shift to x0's
            t = shift_time(t, self.shift_for(x0.shape) / self.shift)
        out = model(self.q_sample(x0, t, noise), t, **dict(model_kwargs or {}))
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # the loss in >= fp32 under autocast
        v, _ = split_output(out, x0.shape[1], False, self.kind)
        return mean_flat((v - (noise - x0)) ** 2)

    def sampling_times(self, steps: int) -> Tensor:
        """The descending grid (steps + 1,) float64 from 1 to 0, uniform then shifted."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ProcessError(f"steps must be an int >= 1 for flow, got {steps!r}; e.g. steps=50")
        return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), self.shift)

    def normalized_time(self, t: Tensor) -> Tensor:
        """Flow time is already in [0, 1] (0 = data): the scale of guidance intervals."""
        return t

    def sampling_grid(self, steps: int, sampler: str | None = None) -> SamplingGrid:
        """Levels t_0 = 1 > ... > t_n = 0 of ``sampling_times(steps)`` (the same for every sampler):
        alpha = 1 - t, sigma = t, network time t (also at t = 0), ODE scale s = alpha + sigma = 1 exactly,
        so the ODE coordinates are (x, t) themselves."""
        times = self.sampling_times(steps)  # (n + 1,) float64, 1 -> 0
        alphas, sigmas = 1.0 - times, times
        c0, c1 = posterior_coefficients(alphas, sigmas)
        return SamplingGrid(
            times=times[:-1],
            alphas=alphas,
            sigmas=sigmas,
            scales=torch.ones_like(times),
            posterior_x0=c0,
            posterior_x=c1,
            end_time=float(times[-1]),
        )

    def predict_at(self, out: Tensor, x: Tensor, grid: SamplingGrid, i: int) -> Prediction:
        """The network predicts the velocity v = eps - x0 at t = t_i; with x = (1 - t) x0 + t eps,
        x0_hat = x - t v and eps_hat = x + (1 - t) v. The ODE velocity dx/dt is v itself."""
        v, _ = split_output(out, x.shape[1], False, self.kind)
        t = grid.time(i)
        return Prediction(x0=x - t * v, eps=x + (1.0 - t) * v, log_variance=None, velocity=v)

    def sample(
        self,
        model_fn: Callable[..., Tensor],
        noise: Tensor,
        *,
        sampler: str | None = None,
        steps: int = 50,
        model_kwargs: Mapping[str, Any] | None = None,
        cfg_scale: float = 1.0,
        uncond_model_kwargs: Mapping[str, Any] | None = None,
        guidance_interval: tuple[float, float] | None = None,
        guidance_channels: int | None = None,
        generators: Sequence[torch.Generator] | None = None,
        callback: Callback = None,
        sampler_options: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """Integrate from noise (t = 1) to data (t = 0) in ``steps`` solver steps (heun: 2 network
        evaluations per step). ``sampler``: one of ``samplers`` (default ``euler``); ``sampler_options``:
        ``{"noise_scale": c}`` for euler_maruyama, ``{"eta": float}`` for ddim. ``callback(i, n, x, x0_hat)``
        runs after every step (i = 0 .. n-1) with the new state and the step's guided data prediction;
        raise from it to stop. ``generators``: one per sample for the stochastic samplers' noise.
        With ``shift_base`` the grid uses the shift of the noise's resolution (``shift_for``).
        """
        process = self
        if self.shift_base:
            options = {**self.to_dict(), "shift": self.shift_for(noise.shape), "shift_base": 0}
            options.pop("kind")
            process = FlowProcess(**options)
        return run_sampler(
            process,
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

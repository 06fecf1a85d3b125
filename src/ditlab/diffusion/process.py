"""The ``Process`` protocol: what every generative process shows its samplers.

A process has its own time ``t`` (DDPM: step index, 0 = clean; flow: t in [0, 1], 0 = data), but every
noise level is also a pair (alpha, sigma) with x = alpha x0 + sigma eps. A sampler sees only

- a ``SamplingGrid``: n solver steps over n + 1 levels from noise (i = 0) to clean data (i = n), with the
  network time of each level, (alpha_i, sigma_i), and the scale s_i = alpha_i + sigma_i of the
  coordinates the probability-flow ODE is solved in: y = x / s = (1 - tau) x0 + tau eps with
  tau = sigma / s in [0, 1]. After this rescaling every Gaussian process is a rectified flow in (y, tau)
  (for flow s = 1 exactly: y = x, tau = t);
- ``denoise(x, i) -> Prediction``: the (guided) network evaluated at level i and converted by the
  process into the data prediction x0, the noise prediction eps, the ODE velocity dy/dtau = eps - x0
  (given by flow's network itself, computed from x0 and eps for DDPM) and, for DDPM, the reverse-step
  log-variance.

So each sampler is written once (``samplers.py``) and runs on every process that provides what it
needs; ``samplers.run_sampler`` is the shared body of ``process.sample``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from ditlab.diffusion.schedules import SpacedSchedule


class Prediction(NamedTuple):
    """What the network says about x at one noise level (alpha, sigma).

    ``x0`` and ``eps`` satisfy x = alpha x0 + sigma eps. ``velocity``, where the process has it exactly
    (flow: the network's own output), is dy/dtau = eps - x0 of the probability-flow ODE in the grid's
    coordinates; ``ode_velocity()`` falls back to eps - x0. ``log_variance`` is DDPM's reverse-step
    log-variance (None for flow).
    """

    x0: Tensor
    eps: Tensor
    log_variance: Tensor | None  # (N, C, ...) or broadcastable
    velocity: Tensor | None = None

    def ode_velocity(self) -> Tensor:
        """dy/dtau = eps_hat - x0_hat in y = x / (alpha + sigma), tau = sigma / (alpha + sigma)."""
        return self.velocity if self.velocity is not None else self.eps - self.x0


Denoiser = Callable[[Tensor, int], Prediction]
# callback(i, n, x, x0_hat) after solver step i of n: x the new state, x0_hat the step's data prediction.
Callback = Callable[[int, int, Tensor, Tensor], Any] | None


def posterior_coefficients(alphas: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """Mean coefficients of q(x_{i+1} | x_i, x0) = N(c0 x0 + c1 x_i, .) between consecutive levels, (n,) each.

    With a = alpha_i / alpha_{i+1} and v = sigma_i^2 - a^2 sigma_{i+1}^2 (the variance of x_i given
    x_{i+1}): c0 = alpha_{i+1} v / sigma_i^2, c1 = a sigma_{i+1}^2 / sigma_i^2 (Ho et al. eq. 7 for any
    alpha, sigma; for DDPM's chain these are its posterior_mean_coef1 / coef2).
    """
    a_now, a_next, s_now, s_next = alphas[:-1], alphas[1:], sigmas[:-1], sigmas[1:]
    ratio = a_now / a_next
    var = s_now**2 - ratio**2 * s_next**2
    return a_next * var / s_now**2, ratio * s_next**2 / s_now**2


@dataclass(frozen=True)
class SamplingGrid:
    """n solver steps over n + 1 noise levels, ordered from noise (i = 0) to clean data (i = n).

    Level i is x_i = alphas[i] x0 + sigmas[i] eps, with alphas[n] = 1 and sigmas[n] = 0 (clean data).
    All tensors are float64 on the CPU.
    """

    times: Tensor  # (n,) the network time of levels 0 .. n-1 (DDPM step index as a float, flow t)
    alphas: Tensor  # (n + 1,)
    sigmas: Tensor  # (n + 1,)
    scales: Tensor  # (n + 1,) s_i = alpha_i + sigma_i (flow: exactly 1): ODE coordinates y = x / s, tau = sigma / s
    posterior_x0: Tensor  # (n,) c0 of q(x_{i+1} | x_i, x0), see posterior_coefficients
    posterior_x: Tensor  # (n,) c1
    end_time: float | None = None  # network time at clean data (flow: 0.0); None: not evaluated there (DDPM)
    chain: SpacedSchedule | None = None  # DDPM: the respaced chain (level i = kept step n-1-i), its variances

    @property
    def num_steps(self) -> int:
        return int(self.times.shape[0])

    @property
    def taus(self) -> Tensor:
        """(n + 1,) the ODE time tau_i = sigma_i / s_i, decreasing to 0."""
        return self.sigmas / self.scales

    def time(self, i: int) -> float:
        """The network time of level i (i = n only where ``end_time`` is set)."""
        if i < self.num_steps:
            return float(self.times[i])
        if i == self.num_steps and self.end_time is not None:
            return self.end_time
        raise ValueError(f"level {i} of a {self.num_steps}-step grid has no network time")

    def can_evaluate(self, i: int) -> bool:
        """Whether the network may be evaluated at level i (always for i < n)."""
        return i < self.num_steps or (i == self.num_steps and self.end_time is not None)


@runtime_checkable
class Process(Protocol):
    """A generative process (``GaussianProcess``, ``FlowProcess``) as trainers and samplers see it."""

    kind: str  # "ddpm" | "flow"
    samplers: tuple[str, ...]  # the sampler names it can run, the default first
    default_sampler: str
    learn_sigma: bool

    def to_dict(self) -> dict[str, Any]:
        """Options that rebuild the process with ``create_process(**d)`` (includes "kind")."""
        ...

    def sample_t(
        self, n: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training times (n,) as ``training_loss`` draws them."""
        ...

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t noise for times t (N,)."""
        ...

    def training_loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Per-sample loss (N,)."""
        ...

    def normalized_time(self, t: Tensor) -> Tensor:
        """Network time -> [0, 1] (0 = data), the scale of guidance intervals."""
        ...

    def sampling_grid(self, steps: int | str, sampler: str | None = None) -> SamplingGrid:
        """The levels ``sampler`` runs on with ``steps`` steps; ProcessError for a bad step count."""
        ...

    def predict_at(self, out: Tensor, x: Tensor, grid: SamplingGrid, i: int) -> Prediction:
        """Convert the raw network output ``out`` at level i of ``grid`` into a Prediction."""
        ...

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
        """Generate x0 from ``noise``; see ``samplers.run_sampler``."""
        ...

"""Noise schedules of the Gaussian process and ADM-style timestep respacing.

All tables are float64 on the CPU; they are indexed (on the index's device, from a copy made once) and cast to
the data's dtype when used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from ditlab.errors import ProcessError

SCHEDULES = ("linear", "cosine", "scaled_linear")


def beta_schedule(name: str, num_timesteps: int) -> Tensor:
    """Betas (T,) float64 of a named schedule.

    - ``linear``: 1e-4 -> 0.02 over T=1000 (Ho et al.), end points scaled by 1000/T as in ADM (the DiT default);
    - ``cosine``: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008, betas clipped at 0.999
      (Nichol & Dhariwal 2021, eq. 17);
    - ``scaled_linear``: linear in sqrt(beta) from 0.00085 to 0.012 (Stable Diffusion's latent schedule).
    """
    T = int(num_timesteps)
    if T < 1:
        raise ProcessError(f"num_timesteps must be >= 1, got {T}; use e.g. num_timesteps=1000")
    if name == "linear":
        scale = 1000.0 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1.0 - alpha_bar(i + 1) / alpha_bar(i), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ProcessError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def space_timesteps(num_timesteps: int, spec: int | str) -> list[int]:
    """The kept step indices (ascending) of an ADM respacing spec.

    ``spec`` is an int or a string: ``"250"`` keeps 250 evenly spaced steps including 0 and T-1,
    ``"10,15,20"`` splits [0, T) into equal sections with that many steps each, ``"ddim50"`` keeps
    ``range(0, T, stride)`` with the stride that gives exactly 50 steps.
    """
    T = int(num_timesteps)
    text = str(spec).strip()
    try:
        if text.startswith("ddim"):
            want = int(text[4:])
            if not 1 <= want <= T:
                raise ProcessError(f"steps must be in [1, {T}], got {want}; pass fewer steps")
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == want:
                    return list(range(0, T, stride))
            raise ProcessError(
                f"no integer stride gives exactly {want} steps out of {T}; use a plain count like '{want}'"
            )
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise ProcessError(
            f"bad steps/spacing {spec!r}; use an int or one of '250', '10,20', 'ddim50', 'linspace20', "
            "'logsnr20', 'quad20', 'cubic20'"
        ) from None
    if sum(counts) > T or min(counts) < 1:
        raise ProcessError(f"steps must be in [1, {T}], got {spec!r}; pass between 1 and {T} steps")
    size, extra = divmod(T, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if count > section:
            raise ProcessError(
                f"cannot take {count} steps from a section of {section}; use fewer steps in {spec!r}"
            )
        # Evenly spaced with a fractional stride, rounded, so both section ends are kept.
        stride = (section - 1) / (count - 1) if count > 1 else 1.0
        kept += [start + round(j * stride) for j in range(count)]
        start += section
    return sorted(set(kept))


def linspace_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """round(linspace(0, T-1, steps+1))[1:]: diffusers' "linspace" spacing, no evaluation at step 0."""
    T = int(num_timesteps)
    return sorted({round(i * ((T - 1) / steps)) for i in range(1, steps + 1)})  # as numpy.linspace


def _distinct(indices: list[int], num_timesteps: int) -> list[int]:
    """Make rounded step indices distinct, ascending: a collision moves to the next free (noisier) step,
    so there are always as many steps as asked; past T-1 it takes the noisiest free step."""
    kept: set[int] = set()
    for index in sorted(indices):
        while index in kept:
            index += 1
        if index >= num_timesteps:
            index = max(set(range(num_timesteps)) - kept)
        kept.add(index)
    return sorted(kept)


def logsnr_timesteps(alphas_cumprod: Tensor, steps: int) -> list[int]:
    """Steps nearest to a grid uniform in log-SNR lambda = log(alpha / sigma), from step T-1 towards
    step 0 (whose level is the final step's start), as DPM-Solver recommends (Lu et al. 2022, Sec. 3.3)."""
    acp = alphas_cumprod.to(torch.float64)
    lam = 0.5 * (torch.log(acp) - torch.log1p(-acp))  # increasing as t decreases
    grid = torch.linspace(float(lam[-1]), float(lam[0]), steps + 1, dtype=torch.float64)[:-1]
    return _distinct([int((lam - g).abs().argmin()) for g in grid], len(lam))


def power_timesteps(num_timesteps: int, steps: int, rho: float) -> list[int]:
    """round((T-1) (i/n)^rho), i = 1..n: rho = 2 is DDIM's "quadratic" spacing, rho = 3 ("cubic")
    spends even more evaluations at low noise."""
    T = int(num_timesteps)
    return _distinct([round((T - 1) * (i / steps) ** rho) for i in range(1, steps + 1)], T)


@dataclass(frozen=True)
class SpacedSchedule:
    """A Markov chain on a subset of the original steps (all step-indexed tables, shape (K,)).

    Index k = 0..K-1 runs over the kept steps in ascending order; ``timesteps[k]`` is the original
    step index that the network sees. The chain's betas are 1 - alpha_bar[k] / alpha_bar[k-1]
    (ADM respacing), so the full chain (K = T) reproduces the original betas.
    """

    timesteps: Tensor  # (K,) int64, original indices
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor  # 1 before the first kept step
    betas: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor  # multiplies x0
    posterior_mean_coef2: Tensor  # multiplies x_t
    log_betas_fixed_large: Tensor  # the fixed "large" variance used without learned sigma

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor, timesteps: list[int] | Tensor) -> SpacedSchedule:
        """The chain that keeps ``timesteps`` (ascending original indices) of a full schedule."""
        ts = torch.as_tensor(timesteps, dtype=torch.long)
        acp = alphas_cumprod.to(torch.float64)[ts]
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        betas = 1.0 - acp / acp_prev
        # Posterior q(x_{k-1} | x_k, x0) (Ho et al. eqs. 6-7).
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        # The posterior variance is 0 at the first step; ADM clips the log by reusing step 1's value.
        first = post_var[1] if len(ts) > 1 else betas[0]
        post_log_var = torch.log(torch.cat([first.reshape(1), post_var[1:]]))
        fixed_large = torch.log(torch.cat([first.reshape(1), betas[1:]]))
        return cls(
            timesteps=ts,
            alphas_cumprod=acp,
            alphas_cumprod_prev=acp_prev,
            betas=betas,
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * acp_prev.sqrt() / (1.0 - acp),
            posterior_mean_coef2=(1.0 - acp_prev) * (1.0 - betas).sqrt() / (1.0 - acp),
            log_betas_fixed_large=fixed_large,
        )


_DEVICE_TABLES = WeakIdKeyDictionary()  # table -> {device: copy}, dropped with the table


def _table_on(table: Tensor, device: torch.device) -> Tensor:
    """``table`` copied to ``device`` once (kept while the table lives)."""
    copies = _DEVICE_TABLES.setdefault(table, {})
    if device not in copies:
        copies[device] = table.to(device)
    return copies[device]


def extract(table: Tensor, index: Tensor, like: Tensor) -> Tensor:
    """table[index] as (N, 1, ..., 1), on ``like``'s device and dtype, to broadcast against ``like``.

    An index on another device than the table gathers from a copy of the table on the index's device,
    made once: no host round trip per call (a GPU training step or sampler step never waits on the host,
    and can be recorded as a CUDA graph). The values are the same either way (a gather, then the cast).
    """
    if index.device != table.device:
        table = _table_on(table, index.device)
    values = table[index].to(device=like.device, dtype=like.dtype)
    return values.reshape(-1, *([1] * (like.dim() - 1)))

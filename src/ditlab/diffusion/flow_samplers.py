"""Samplers for rectified flow, as stateless functions with one signature::

    sample_<name>(velocity, x, times, *, generators=None, callback=None, **options) -> x0

``velocity(x, t) -> v`` evaluates the (guided) network at scalar time t (0 = data, 1 = noise);
``times`` is a descending float64 tensor from 1 to 0 with steps + 1 entries.
The path is x_t = (1 - t) x0 + t eps, so the velocity is v = eps - x0 and dx/dt = v.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ditlab.diffusion.noise import randn_like_per_sample

Velocity = Callable[[Tensor, float], Tensor]
Callback = Callable[[int, int], None] | None


def sample_euler(
    velocity: Velocity,
    x: Tensor,
    times: Tensor,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dt = v(x, t); one evaluation per step."""
    n = len(times) - 1
    for i in range(n):
        t, t_next = float(times[i]), float(times[i + 1])
        x = x + (t_next - t) * velocity(x, t)
        if callback is not None:
            callback(i, n)
    return x


def sample_heun(
    velocity: Velocity,
    x: Tensor,
    times: Tensor,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Heun's method (explicit trapezoid, 2nd order); two evaluations per step."""
    n = len(times) - 1
    for i in range(n):
        t, t_next = float(times[i]), float(times[i + 1])
        h = t_next - t
        v = velocity(x, t)
        x_euler = x + h * v
        x = x + 0.5 * h * (v + velocity(x_euler, t_next))
        if callback is not None:
            callback(i, n)
    return x


def sample_euler_maruyama(
    velocity: Velocity,
    x: Tensor,
    times: Tensor,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback = None,
    noise_scale: float = 1.0,
) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE with the ODE's marginals.

    With diffusion g(t)^2 = 2 c t (c = ``noise_scale``) the reverse SDE is
    dx = [v - (g^2 / 2) score] dt + g dW_bar, and for the linear path the score is
    -E[eps | x_t] / t with E[eps | x_t] = x + (1 - t) v, so g^2/2 * score = -c (x + (1 - t) v) stays
    bounded as t -> 0. The last step (to t = 0) is the deterministic Euler step, i.e. the denoised mean.
    """
    n = len(times) - 1
    for i in range(n):
        t, t_next = float(times[i]), float(times[i + 1])
        h = t - t_next  # > 0: the step size in reverse time
        v = velocity(x, t)
        if t_next > 0:
            eps_hat = x + (1.0 - t) * v
            drift = -v - noise_scale * eps_hat  # reverse-time drift: -(v - g^2/2 * score)
            x = x + h * drift + (2.0 * noise_scale * t * h) ** 0.5 * randn_like_per_sample(x, generators)
        else:
            x = x - h * v
        if callback is not None:
            callback(i, n)
    return x


FLOW_SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "euler_maruyama": sample_euler_maruyama}

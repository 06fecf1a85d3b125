"""ditlab.diffusion: the generative processes (Gaussian DDPM, rectified flow) and their samplers.

Time convention (one for the whole package):

- ``ddpm``: ``t`` counts noise steps, an integer index in [0, T) passed to the network as a float;
  0 = clean data plus one step of noise, T-1 = (almost) pure noise. With fewer sampling steps
  (respacing) the network still sees the ORIGINAL indices, as in ADM.
- ``flow``: ``t`` is a float in [0, 1] with 0 = data and 1 = noise, x_t = (1 - t) x0 + t eps (SD3).
- Guidance intervals use normalised time in [0, 1]: t / (T - 1) for ddpm, t itself for flow.

Network contract: ``model_fn(x, t, **model_kwargs) -> out``; with learned sigma (ddpm only) ``out``
has 2C channels, the prediction first and the variance interpolation values v in [-1, 1] second.

Both processes implement the ``Process`` protocol (``process.py``): noise levels as (alpha, sigma) on a
``SamplingGrid`` and the conversion of network outputs into x0 / eps / velocity predictions, so the
samplers (``samplers.py``) are written once: ddpm runs ddpm, ddim, dpmpp_2m, euler, heun,
euler_maruyama; flow runs euler, heun, euler_maruyama, ddim, dpmpp_2m.

Usage::

    p = create_process("ddpm", schedule="linear", num_timesteps=1000, prediction="eps", learn_sigma=True)
    loss = p.training_loss(model, x0, {"y": labels})                # (N,)
    gens = per_sample_generators(seeds)
    x0 = p.sample(model, per_sample_noise((C, H, W), gens), sampler="ddpm", steps=250,
                  model_kwargs={"y": labels}, cfg_scale=4.0, uncond_model_kwargs={"y": null_labels},
                  generators=gens, callback=lambda i, n, x, x0_hat: print(f"step {i + 1}/{n}"))
"""
from __future__ import annotations

import inspect
from typing import Any

from ditlab.diffusion.flow import FlowProcess
from ditlab.diffusion.gaussian import GaussianProcess
from ditlab.diffusion.guidance import classifier_free_guidance
from ditlab.diffusion.noise import per_sample_generators, per_sample_noise
from ditlab.diffusion.process import Prediction, Process, SamplingGrid
from ditlab.diffusion.samplers import SAMPLERS
from ditlab.errors import ProcessError

PROCESSES: dict[str, type] = {"ddpm": GaussianProcess, "flow": FlowProcess}


def create_process(kind: str, **options: Any) -> Process:
    """Build a process by name: ``"ddpm"`` (options: schedule, num_timesteps, prediction, learn_sigma)
    or ``"flow"`` (time_sampling, shift, logit_mean, logit_std, mode_scale).

    ``create_process(**p.to_dict())`` rebuilds ``p``.
    """
    if kind not in PROCESSES:
        raise ProcessError(f"unknown process {kind!r}; choose one of {', '.join(PROCESSES)}")
    cls = PROCESSES[kind]
    valid = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ProcessError(f"unknown option(s) {unknown} for process {kind!r}; valid options: {', '.join(valid)}")
    return cls(**options)


__all__ = [
    "PROCESSES",
    "SAMPLERS",
    "FlowProcess",
    "GaussianProcess",
    "Prediction",
    "Process",
    "SamplingGrid",
    "classifier_free_guidance",
    "create_process",
    "per_sample_generators",
    "per_sample_noise",
]

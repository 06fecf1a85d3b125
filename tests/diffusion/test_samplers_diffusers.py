"""Sampler steps against diffusers' schedulers on the same inputs (same math, independent code)."""
from __future__ import annotations

import warnings

import pytest
import torch

from ditlab.diffusion import create_process, per_sample_generators
from ditlab.diffusion.analytic import GaussianMixture
from ditlab.diffusion.samplers import ddim_step

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notes inside diffusers

LINEAR = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def mixture() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([[-1.0, 0.5], [0.8, -0.4]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.25]]]),
        [0.4, 0.6],
    )


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_one_ddim_step_equals_diffusers(eta):
    p = create_process("ddpm", learn_sigma=False)
    ref = diffusers.DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(20)  # prev_t = t - 50
    x, eps, z = torch.randn(3, 2, 4, 4, 4).unbind(0)
    t = 500
    want = ref.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
    ab, ab_prev = float(p.alphas_cumprod[t]), float(p.alphas_cumprod[t - 50])
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
    levels = (ab**0.5, (1 - ab) ** 0.5, ab_prev**0.5, (1 - ab_prev) ** 0.5)  # alpha, sigma, alpha', sigma'
    torch.testing.assert_close(ddim_step(x0, eps, *levels, eta, z), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpmpp_2m_run_equals_diffusers(prediction):
    """A whole DPM-Solver++(2M) run (first-order first and last steps, 2M in between) on the exact
    denoiser of a Gaussian mixture, with diffusers' default "linspace" timesteps."""
    p = create_process("ddpm", learn_sigma=False, prediction=prediction)
    model = mixture().ddpm_model(p)
    noise = torch.randn(64, 2, dtype=torch.float64)
    ref = diffusers.DPMSolverMultistepScheduler(
        **LINEAR, algorithm_type="dpmsolver++", solver_order=2, prediction_type=PREDICTION_TYPES[prediction]
    )
    ref.set_timesteps(12)
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(model(x, torch.full((64,), float(t))), t, x).prev_sample
    got = p.sample(model, noise, sampler="dpmpp_2m", steps="linspace12")
    torch.testing.assert_close(got, x, atol=2e-5, rtol=1e-5)


def test_ddim_run_equals_diffusers_on_leading_spacing():
    """ADM's "ddim10" = range(0, 1000, 100) = diffusers DDIMScheduler's "leading" spacing."""
    p = create_process("ddpm", learn_sigma=False)
    model = mixture().ddpm_model(p)
    noise = torch.randn(64, 2, dtype=torch.float64)
    ref = diffusers.DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    ref.set_timesteps(10)
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(model(x, torch.full((64,), float(t))), t, x).prev_sample
    torch.testing.assert_close(p.sample(model, noise, sampler="ddim", steps="ddim10"), x, atol=2e-5, rtol=1e-5)


def test_ddpm_learned_range_run_equals_diffusers():
    """Ancestral sampling with learned-range variance; one sample so both draw the same noise."""
    p = create_process("ddpm", learn_sigma=True)
    exact = mixture().ddpm_model(p)

    def model(x, t):  # the exact mean plus variance values that vary with x and t
        out = exact(x, t)
        return torch.cat([out[:, :2], torch.tanh(x + t[:, None] / 1000 - 0.5)], dim=1)

    noise = torch.randn(1, 2, dtype=torch.float64)
    ref = diffusers.DDPMScheduler(**LINEAR, variance_type="learned_range", clip_sample=False)
    ref.set_timesteps(10)  # "leading": 900, 800, ..., 0
    g = torch.Generator().manual_seed(7)
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(model(x, torch.full((1,), float(t))), t, x, generator=g).prev_sample
    got = p.sample(model, noise, sampler="ddpm", steps="ddim10", generators=per_sample_generators([7]))
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_run_equals_diffusers_flow_match_euler(shift):
    """SD3's scheduler: sigmas shifted by s t / (1 + (s - 1) t), Euler steps, timestep = 1000 sigma."""
    f = create_process("flow", shift=shift)
    velocity = mixture().flow_model()
    noise = torch.randn(64, 2, dtype=torch.float64)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=torch.linspace(1, 0, 9)[:-1].tolist())
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(velocity(x, torch.full((64,), float(t) / 1000)), t, x).prev_sample
    torch.testing.assert_close(f.sample(velocity, noise, sampler="euler", steps=8), x, atol=2e-5, rtol=1e-5)

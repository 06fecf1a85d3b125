"""Every sampler against data distributions whose exact denoiser is known.

For Gaussian data the exact denoiser is affine in x, so a deterministic sampler is an affine map
x_T -> M x_T + c of the noise, and its output distribution is exactly N(c, M M^T): we get M and c
from d + 1 inputs, with no Monte Carlo error, and check the error against C / steps^order.
"""
from __future__ import annotations

import pytest
import torch

from ditlab.diffusion import create_process
from ditlab.diffusion.analytic import GaussianMixture

torch.set_default_dtype(torch.float32)
MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]])


def gaussian() -> GaussianMixture:
    return GaussianMixture(MEAN[None], COV[None])


def two_gaussians() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([[-1.2, 0.4], [1.0, -0.6]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.15, -0.05], [-0.05, 0.25]]]),
        [0.4, 0.6],
    )


def model_for(process, data: GaussianMixture):
    return data.ddpm_model(process) if process.kind == "ddpm" else data.flow_model()


def exact_output_moments(process, sampler, steps, data):
    """(mean, covariance) of the output of a deterministic sampler whose denoiser is affine."""
    basis = torch.cat([torch.zeros(1, 2), torch.eye(2)]).double()  # (d + 1, d)
    out = process.sample(model_for(process, data), basis, sampler=sampler, steps=steps)
    c, M = out[0], (out[1:] - out[0]).T
    return c, M @ M.T


# (process options, sampler, C, order, steps): covariance error must be <= C / steps^order.
DETERMINISTIC = [
    (("ddpm", {"learn_sigma": False}), "ddim", 3.5, 1, (20, 40, 80)),
    (("ddpm", {"learn_sigma": False}), "dpmpp_2m", 4.0, 2, (20, 40, 80)),
    # With cosine the final first-order jump (from step 12 at 80 steps) sets a ~2e-4 floor: stop at 40.
    (("ddpm", {"learn_sigma": True, "prediction": "v", "schedule": "cosine"}), "dpmpp_2m", 5.0, 2, (10, 20, 40)),
    (("flow", {}), "euler", 2.5, 1, (20, 40, 80)),
    (("flow", {}), "heun", 0.4, 2, (20, 40, 80)),
    (("flow", {"shift": 3.0}), "euler", 3.5, 1, (20, 40, 80)),
    (("flow", {"shift": 3.0}), "heun", 3.0, 2, (20, 40, 80)),
]


@pytest.mark.parametrize("spec,sampler,C,order,grid", DETERMINISTIC)
def test_deterministic_samplers_on_gaussian_converge_at_their_order(spec, sampler, C, order, grid):
    process = create_process(spec[0], **spec[1])
    errors = []
    for steps in grid:
        mean, cov = exact_output_moments(process, sampler, steps, gaussian())
        err = float((cov - COV.double()).norm())
        assert err <= C / steps**order, (steps, err)
        # DDPM starts from N(0, I) instead of the exact x_T ~ N(sqrt(a_T) mu, ...): a 0.6% mean offset.
        assert float((mean - MEAN.double()).norm()) <= (0.01 if process.kind == "ddpm" else 1e-9)
        errors.append(err)
    # The error falls by at least about 2^order per doubling of steps.
    ratios = [b / a for a, b in zip(errors, errors[1:], strict=False)]
    assert max(ratios) < (0.65 if order == 1 else 0.4), ratios


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_is_exact_for_a_point_mass(shift):
    """With data at a single point the flow's paths are straight, so Euler is exact at any step count."""
    point = GaussianMixture(MEAN[None], torch.zeros(1, 2, 2))
    process = create_process("flow", shift=shift)
    noise = torch.randn(16, 2, dtype=torch.float64)
    for steps in (1, 3, 10):
        out = process.sample(point.flow_model(), noise, sampler="euler", steps=steps)
        torch.testing.assert_close(out, MEAN.double().expand(16, 2), atol=1e-12, rtol=0)


# (process options, sampler, sampler options, C): covariance error <= C / steps + Monte Carlo allowance.
STOCHASTIC = [
    (("ddpm", {"learn_sigma": False}), "ddpm", None, 2.0),
    (("ddpm", {"learn_sigma": True}), "ddpm", None, 7.0),  # v = -1: the posterior variance
    (("ddpm", {"learn_sigma": False}), "ddim", {"eta": 1.0}, 7.0),
    (("flow", {}), "euler_maruyama", None, 1.0),
]


@pytest.mark.parametrize("spec,sampler,options,C", STOCHASTIC)
def test_stochastic_samplers_on_gaussian(spec, sampler, options, C):
    process = create_process(spec[0], **spec[1])
    n, mc = 20000, 0.025  # 0.025 is ~3 standard errors of the sample covariance at this n
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.manual_seed(2)
    for steps in (10, 40, 160):
        x = process.sample(model_for(process, gaussian()), noise, sampler=sampler, steps=steps, sampler_options=options)
        err = float((torch.cov(x.T) - COV.double()).norm())
        assert err <= C / steps + mc, (steps, err)
        assert float((x.mean(0) - MEAN.double()).norm()) <= mc


def test_ode_samplers_on_a_mixture_converge_pathwise():
    """Each noise maps to one output: compare with a fine reference solve of the same ODE."""
    data = two_gaussians()
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for kind, sampler, order, ref_sampler, ref_steps in (
        ("ddpm", "ddim", 1, "dpmpp_2m", 250),
        ("ddpm", "dpmpp_2m", 2, "dpmpp_2m", 250),
        ("flow", "euler", 1, "heun", 100),
        ("flow", "heun", 2, "heun", 100),
    ):
        p = create_process(kind, learn_sigma=False) if kind == "ddpm" else create_process(kind)
        model = model_for(p, data)
        ref = p.sample(model, noise, sampler=ref_sampler, steps=ref_steps)
        errors = [float((p.sample(model, noise, sampler=sampler, steps=s) - ref).norm(dim=1).mean())
                  for s in (10, 20, 40)]
        assert errors[-1] < (0.05 if order == 1 else 0.01), (sampler, errors)
        assert errors[2] / errors[1] < (0.65 if order == 1 else 0.45), (sampler, errors)


@pytest.mark.parametrize(
    "kind,sampler,steps",
    [("ddpm", "ddpm", 100), ("ddpm", "ddim", 100), ("ddpm", "dpmpp_2m", 20),
     ("flow", "euler", 100), ("flow", "heun", 10), ("flow", "euler_maruyama", 100)],
)
def test_every_sampler_reproduces_a_mixture(kind, sampler, steps):
    data = two_gaussians()
    p = create_process(kind, learn_sigma=False) if kind == "ddpm" else create_process(kind)
    n = 8000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.manual_seed(5)
    x = p.sample(model_for(p, data), noise, sampler=sampler, steps=steps)
    assert float((x.mean(0) - data.mean()).norm()) < 0.04
    assert float((torch.cov(x.T) - data.covariance()).norm()) < 0.06
    # The mode weights: the share of samples on the second component's side of the x-axis split.
    assert abs(float((x[:, 0] > -0.1).double().mean()) - 0.6) < 0.025


def test_guidance_scale_0_and_1_give_unconditional_and_conditional_distributions():
    data = two_gaussians()
    n = 6000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y, null = torch.zeros(n, dtype=torch.long), torch.full((n,), 2)
    for p, sampler in ((create_process("ddpm", learn_sigma=False), "dpmpp_2m"), (create_process("flow"), "heun")):
        model = model_for(p, data)
        kw = dict(sampler=sampler, steps=25, model_kwargs={"y": y}, uncond_model_kwargs={"y": null})
        cond = p.sample(model, noise, cfg_scale=1.0, **kw)
        assert float((cond.mean(0) - data.means[0]).norm()) < 0.03
        assert float((torch.cov(cond.T) - data.covs[0]).norm()) < 0.03
        uncond = p.sample(model, noise, cfg_scale=0.0, **kw)
        assert float((uncond.mean(0) - data.mean()).norm()) < 0.05
        assert float((torch.cov(uncond.T) - data.covariance()).norm()) < 0.08
        # Stronger guidance concentrates the class: a smaller spread than the conditional one.
        strong = p.sample(model, noise, cfg_scale=4.0, **kw)
        assert torch.cov(strong.T).trace() < torch.cov(cond.T).trace()


def test_the_analytic_denoiser_is_bayes_rule():
    """E[x0 | x_t] of a 1-D two-component mixture, against numerical integration of Bayes' rule."""
    from scipy import integrate, stats

    data = GaussianMixture(torch.tensor([[-1.0], [0.7]]), torch.tensor([[[0.2]], [[0.05]]]), [0.3, 0.7])
    prior = lambda z: 0.3 * stats.norm.pdf(z, -1.0, 0.2**0.5) + 0.7 * stats.norm.pdf(z, 0.7, 0.05**0.5)  # noqa: E731
    for a, s, x in ((0.9, 0.4, 0.2), (0.3, 0.95, -0.8), (0.99, 0.1, 0.65)):
        lik = lambda z, x=x, a=a, s=s: prior(z) * stats.norm.pdf(x, a * z, s)  # noqa: E731
        x0_mean = (integrate.quad(lambda z, lik=lik: z * lik(z), -6, 6, points=[-1, 0.7])[0]
                   / integrate.quad(lik, -6, 6, points=[-1, 0.7])[0])
        eps = data.posterior_eps(torch.tensor([[x]], dtype=torch.float64), a, s)
        assert float((x - s * eps) / a) == pytest.approx(x0_mean, rel=1e-5, abs=1e-7)  # quadrature accuracy
    sample = data.sample(400_000, torch.Generator().manual_seed(0))
    assert float(sample.mean()) == pytest.approx(float(data.mean()), abs=0.005)
    assert float(sample.var()) == pytest.approx(float(data.covariance()), rel=0.01)

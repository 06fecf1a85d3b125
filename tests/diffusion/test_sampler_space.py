"""Every sampler x process pair against closed forms on Gaussian data (issue 11, "One sampler space").

Data: two independent coordinates x0_d ~ N(mu_d, s_d^2), mu = (1, -2), s = (0.5, 1.5) (a nonzero mean, one
spread below and one above the noise's). Its exact denoiser at any level (alpha, sigma) is

    E[x0 | x] = mu + alpha s^2 (x - alpha mu) / (alpha^2 s^2 + sigma^2)     (per coordinate),

so no network is needed (``GaussianMixture`` computes it; the callback test uses the formula itself).

What is compared (``moment_errors``): N = 50,000 samples (100,000 scalars), started from the exact marginal
at the grid's first level (flow: N(0, I); DDPM: alpha_0 mu + sqrt(alpha_0^2 s^2 + sigma_0^2) z, so the
prior mismatch of N(0, I) at t = T-1 does not hide the sampler's own error), with z standardised per
coordinate (sample mean 0, sample std 1 exactly). The errors are the largest over the two coordinates of
|sample mean - mu| / |mu| and |sample std - s| / s. Every sampler here is affine in its noise for this data,
so a deterministic sampler's sample moments are exactly its output distribution's: no Monte-Carlo error.
A stochastic sampler adds fresh noise, whose Monte-Carlo error is about 1/sqrt(2N) = 0.3% of s for the std
and s/sqrt(N)/|mu| <= 0.34% for the mean (1 standard error).

Checks: at 100 steps both errors <= 5%; the std error (where the discretisation error lives: these
samplers keep the mean exact or at Monte-Carlo level, as E[y] is linear in tau) falls from 10 to 100
steps by the factor ``SHRINK`` of each pair: >= 10 for second-order ODE solvers (ideal 100), >= 4 for
first-order ones (ideal 10), and for stochastic ones >= 3 with the 10-step error also >= 10 Monte-Carlo
standard errors above the 100-step one. ``python tests/diffusion/test_sampler_space.py`` prints the table
of docs/samplers.md.
"""
from __future__ import annotations

import sys

import pytest
import torch

from ditlab.diffusion import create_process
from ditlab.diffusion.analytic import GaussianMixture
from ditlab.diffusion.process import posterior_coefficients
from ditlab.errors import ProcessError

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = torch.tensor([0.5, 1.5], dtype=torch.float64)
N = 50_000
DATA = GaussianMixture(MU[None], torch.diag(S**2)[None])

# (process kind, process options, sampler, sampler options, minimum std-error ratio 10 -> 100 steps, stochastic)
PAIRS = [
    ("ddpm", {"learn_sigma": False}, "ddpm", None, 3.0, True),  # fixed variance beta
    ("ddpm", {"learn_sigma": False}, "ddim", None, 4.0, False),
    ("ddpm", {"learn_sigma": False}, "dpmpp_2m", None, 10.0, False),
    ("ddpm", {"learn_sigma": False}, "euler", None, 4.0, False),
    ("ddpm", {"learn_sigma": False}, "heun", None, 10.0, False),
    ("ddpm", {"learn_sigma": False}, "euler_maruyama", None, 3.0, True),
    ("ddpm", {"schedule": "cosine", "prediction": "v", "learn_sigma": False}, "heun", None, 10.0, False),
    ("ddpm", {"schedule": "cosine", "prediction": "v", "learn_sigma": False}, "euler_maruyama", None, 3.0, True),
    ("flow", {}, "euler", None, 4.0, False),
    ("flow", {}, "heun", None, 10.0, False),
    ("flow", {}, "euler_maruyama", None, 3.0, True),
    ("flow", {}, "ddim", None, 4.0, False),
    ("flow", {}, "dpmpp_2m", None, 10.0, False),
    ("flow", {"shift": 3.0}, "dpmpp_2m", None, 10.0, False),
]


def pair_id(pair) -> str:
    kind, options, sampler, sampler_options = pair[:4]
    extra = "".join(f"-{k}={v}" for k, v in {**options, **(sampler_options or {})}.items() if k != "learn_sigma")
    return f"{kind}-{sampler}{extra}"


def standard_noise(seed: int = 0) -> torch.Tensor:
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0)  # (N, 2), sample mean 0 and sample std 1 exactly


def model_for(process, data: GaussianMixture = DATA):
    return data.ddpm_model(process) if process.kind == "ddpm" else data.flow_model()


def moment_errors(kind, options, sampler, sampler_options, steps: int) -> tuple[float, float]:
    """(relative mean error, relative std error), each the largest over the two coordinates."""
    p = create_process(kind, **options)
    grid = p.sampling_grid(steps, sampler)
    a0, s0 = grid.alphas[0], grid.sigmas[0]
    x_start = a0 * MU + (a0**2 * S**2 + s0**2).sqrt() * standard_noise()  # the exact marginal at level 0
    torch.manual_seed(1234)  # the stochastic samplers' noise: a stream unrelated to the start's
    x = p.sample(model_for(p), x_start, sampler=sampler, steps=steps, sampler_options=sampler_options)
    mean_err = float(((x.mean(0) - MU).abs() / MU.abs()).max())
    std_err = float(((x.std(0) - S).abs() / S).max())
    return mean_err, std_err


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_gaussian_moments_within_5_percent_at_100_steps_and_converging(pair):
    kind, options, sampler, sampler_options, shrink, stochastic = pair
    mean10, std10 = moment_errors(kind, options, sampler, sampler_options, 10)
    mean100, std100 = moment_errors(kind, options, sampler, sampler_options, 100)
    assert mean100 <= 0.05 and std100 <= 0.05, (mean100, std100)
    assert std100 * shrink <= std10, (std10, std100)
    if stochastic:
        mc = 1.0 / (2 * N) ** 0.5  # one standard error of the relative sample std
        assert std10 - std100 >= 10 * mc, (std10, std100)
        assert mean10 <= 0.02 and mean100 <= 0.02  # the mean is right at Monte-Carlo level (<= 6 s.e.)
    else:
        assert mean10 <= 1e-9 and mean100 <= 1e-9  # E[y] is linear in tau: every ODE solver keeps it exactly


@pytest.mark.parametrize(
    "kind,options,sampler,sampler_options,learned",
    [("ddpm", {"learn_sigma": True}, "ddpm", None, -1.0), ("ddpm", {"learn_sigma": False}, "ddim", {"eta": 1.0}, None),
     ("flow", {}, "ddim", {"eta": 1.0}, None)],
    ids=["ddpm-ddpm-learned-v=-1", "ddpm-ddim-eta=1", "flow-ddim-eta=1"],
)
def test_samplers_with_the_posterior_variance_need_more_steps(kind, options, sampler, sampler_options, learned):
    """DDPM with the small (posterior) variance, the learned range at v = -1, and DDIM with eta = 1, which
    draws the same variance: the spread is too small with few steps (Nichol & Dhariwal 2021, Sec. 3.1), so
    100 steps leave 6-7% on the std; they converge at first order and are within 5% at DiT's 250."""
    p = create_process(kind, **options)
    model = DATA.ddpm_model(p, learn_sigma_value=learned) if learned is not None else model_for(p)
    errors = {}
    for steps in (25, 100, 250):
        grid = p.sampling_grid(steps, sampler)
        a0, s0 = grid.alphas[0], grid.sigmas[0]
        torch.manual_seed(1234)
        x = p.sample(model, a0 * MU + (a0**2 * S**2 + s0**2).sqrt() * standard_noise(), sampler=sampler,
                     steps=steps, sampler_options=sampler_options)
        errors[steps] = float(((x.std(0) - S).abs() / S).max())
        assert float(((x.mean(0) - MU).abs() / MU.abs()).max()) <= 0.02
    assert errors[250] <= 0.05, errors
    assert errors[25] >= 2.5 * errors[100] and errors[100] >= 2.0 * errors[250], errors  # first order: 4x, 2.5x


def exact_x0(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """E[x0 | x] of the data, from the closed form in the module docstring (not from GaussianMixture)."""
    return MU + alpha * S**2 * (x - alpha * MU) / (alpha**2 * S**2 + sigma**2)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_callback_sees_every_step_and_the_exact_denoiser(pair):
    kind, options, sampler, sampler_options = pair[:4]
    p = create_process(kind, **options)
    steps = 6
    grid = p.sampling_grid(steps, sampler)
    if kind == "ddpm":  # the grid's levels are the process's own at the times the network sees
        acp = p.alphas_cumprod[grid.times.long()]
        torch.testing.assert_close(grid.alphas[:-1] ** 2, acp, rtol=1e-12, atol=0)
    else:
        torch.testing.assert_close(grid.sigmas[:-1], grid.times, rtol=0, atol=0)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = []
    out = p.sample(model_for(p), noise, sampler=sampler, steps=steps, sampler_options=sampler_options,
                   callback=lambda i, n, x, x0_hat: calls.append((i, n, x.clone(), x0_hat.clone())))
    assert [(i, n) for i, n, _, _ in calls] == [(i, steps) for i in range(steps)]
    assert torch.equal(calls[-1][2], out)  # the state after the last step is the result
    before = [noise] + [x for _, _, x, _ in calls[:-1]]  # the state each step started from
    for (i, _, _, x0_hat), x in zip(calls, before, strict=True):
        want = exact_x0(x, float(grid.alphas[i]), float(grid.sigmas[i]))
        torch.testing.assert_close(x0_hat, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_callback_x0_hat_is_the_guided_prediction(kind):
    """With classifier-free guidance x0_hat = x0_u + s (x0_c - x0_u): x0 is affine in the guided output."""
    data = GaussianMixture(torch.tensor([[-1.0, 0.5], [0.8, -0.4]]), 0.2 * torch.eye(2).expand(2, 2, 2), [0.5, 0.5])
    p = create_process(kind, **({"learn_sigma": False} if kind == "ddpm" else {}))
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y, null = torch.zeros(16, dtype=torch.long), torch.full((16,), 2)
    calls = []
    p.sample(model_for(p, data), noise, sampler="dpmpp_2m", steps=5, model_kwargs={"y": y}, cfg_scale=3.0,
             uncond_model_kwargs={"y": null}, callback=lambda i, n, x, x0_hat: calls.append((x.clone(), x0_hat)))
    grid = p.sampling_grid(5, "dpmpp_2m")
    before = [noise] + [x for x, _ in calls[:-1]]
    for i, ((_, x0_hat), x) in enumerate(zip(calls, before, strict=True)):
        a, s = float(grid.alphas[i]), float(grid.sigmas[i])
        if a == 0.0:  # flow t = 1: x0_hat is the prior mean of the class, guided
            cond, uncond = data.means[0], data.mean()
        else:
            cond, uncond = ((x - s * data.posterior_eps(x, a, s, lab)) / a for lab in (y, null))
        torch.testing.assert_close(x0_hat, (uncond + 3.0 * (cond - uncond)).expand_as(x0_hat), rtol=1e-9, atol=1e-9)


class Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_a_callback_that_raises_stops_sampling(kind):
    p = create_process(kind, **({"learn_sigma": False} if kind == "ddpm" else {}))
    for sampler in p.samplers:
        seen = []

        def model(x, t, seen=seen):
            seen.append(float(t[0]))
            return model_for(p)(x, t)

        def stop_at_2(i, n, x, x0_hat):
            if i == 2:
                raise Stop

        with pytest.raises(Stop):
            p.sample(model, torch.randn(4, 2, dtype=torch.float64), sampler=sampler, steps=8, callback=stop_at_2)
        assert len(seen) == (6 if sampler == "heun" else 3), (sampler, seen)  # steps 0, 1, 2 only


def two_gaussians() -> GaussianMixture:
    return GaussianMixture(torch.tensor([[-1.2, 0.4], [1.0, -0.6]]),
                           torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.15, -0.05], [-0.05, 0.25]]]), [0.4, 0.6])


@pytest.mark.parametrize("kind,options", [("ddpm", {"learn_sigma": False}), ("ddpm", {"schedule": "cosine"}),
                                          ("flow", {}), ("flow", {"shift": 3.0})])
def test_euler_equals_ddim_on_every_process(kind, options):
    """In y = x / (alpha + sigma) the point-mass paths are straight, so Euler's step is DDIM's (eta = 0),
    also for a non-Gaussian denoiser; flow Euler (x += (t' - t) v) is the same step."""
    p = create_process(kind, **options)
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    model = model_for(p, two_gaussians())
    for steps in (1, 7, 30):
        euler = p.sample(model, noise, sampler="euler", steps=steps)
        torch.testing.assert_close(euler, p.sample(model, noise, sampler="ddim", steps=steps), rtol=1e-10, atol=1e-10)


def test_grids_end_at_clean_data_and_their_posteriors_are_bayes_rule():
    ddpm = create_process("ddpm")
    for steps, sampler in ((10, "ddpm"), ("cubic7", "dpmpp_2m"), (1, "ddim")):
        g = ddpm.sampling_grid(steps, sampler)
        chain = ddpm.spaced(steps, sampler)
        assert g.num_steps == chain.num_steps and g.end_time is None and not g.can_evaluate(g.num_steps)
        assert torch.equal(g.times, chain.timesteps.flip(0).double())
        assert float(g.alphas[-1]) == 1.0 and float(g.sigmas[-1]) == 0.0 and float(g.taus[-1]) == 0.0
        # Ho et al. eq. 7 written with (alpha, sigma) equals the chain's beta-based tables.
        c0, c1 = posterior_coefficients(g.alphas, g.sigmas)
        torch.testing.assert_close(c0, g.posterior_x0, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(c1, g.posterior_x, rtol=1e-10, atol=1e-13)
        assert bool((g.taus[:-1] > g.taus[1:]).all()) and float(g.taus[0]) < 1.0
    flow = create_process("flow", shift=3.0)
    g = flow.sampling_grid(5)
    assert float(g.alphas[0]) == 0.0 and float(g.sigmas[0]) == 1.0 and g.end_time == 0.0 and g.can_evaluate(5)
    assert torch.equal(g.taus, flow.sampling_times(5)) and torch.equal(g.scales, torch.ones(6, dtype=torch.float64))


def test_dpmpp_2m_from_pure_noise_on_flow():
    """At t = 1 (alpha = 0) the log-SNR is -inf: the first step is DDIM's from noise, x1 = a1 x0_hat + s1 x,
    the second has no finite slope to extrapolate and is first order too; the third is second order."""
    p = create_process("flow")
    noise = torch.randn(100, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    model = model_for(p, two_gaussians())
    runs = {}
    for sampler in ("dpmpp_2m", "ddim"):
        calls = []
        p.sample(model, noise, sampler=sampler, steps=6, callback=lambda i, n, x, x0_hat, c=calls: c.append(x))
        runs[sampler] = calls
    assert all(torch.isfinite(x).all() for x in runs["dpmpp_2m"])
    torch.testing.assert_close(runs["dpmpp_2m"][0], runs["ddim"][0], rtol=0, atol=1e-15)
    torch.testing.assert_close(runs["dpmpp_2m"][1], runs["ddim"][1], rtol=0, atol=1e-15)
    assert not torch.allclose(runs["dpmpp_2m"][2], runs["ddim"][2])


def test_heun_evaluations_on_ddpm():
    """Heun: 2 evaluations per step, except the last into clean data (no network time there): 2n - 1."""
    p = create_process("ddpm", learn_sigma=False)
    times = []

    def model(x, t):
        times.append(float(t[0]))
        return model_for(p)(x, t)

    p.sample(model, torch.randn(3, 2, dtype=torch.float64), sampler="heun", steps=5)
    assert len(times) == 9
    kept = p.spaced(5, "heun").timesteps.tolist()[::-1]  # noisiest first
    assert times == [kept[0]] + [t for k in kept[1:] for t in (k, k)]


def test_bad_sampler_requests():
    flow, ddpm = create_process("flow"), create_process("ddpm")
    x = torch.randn(2, 2)
    with pytest.raises(ProcessError, match="^sampler 'ddpm' cannot run the flow process; choose one of euler, heun, "
                                           "euler_maruyama, ddim, dpmpp_2m$"):
        flow.sample(lambda x, t: x, x, sampler="ddpm")
    with pytest.raises(ProcessError, match="^unknown sampler 'lms' for ddpm; choose one of ddpm, ddim"):
        ddpm.sample(lambda x, t: torch.cat([x, x], 1), x, sampler="lms")
    with pytest.raises(ProcessError, match="eta must be >= 0"):
        flow.sample(lambda x, t: x, x, sampler="ddim", sampler_options={"eta": -0.5})
    with pytest.raises(ProcessError, match="noise_scale must be >= 0"):
        ddpm.sample(lambda x, t: torch.cat([x, x], 1), x, sampler="euler_maruyama", sampler_options={"noise_scale": -1})
    with pytest.raises(ProcessError, match="has no option"):
        ddpm.sample(lambda x, t: torch.cat([x, x], 1), x, sampler="heun", sampler_options={"eta": 1.0})


def print_table() -> None:
    """The mean / std errors of every pair at 10, 20, 50, 100 steps (docs/samplers.md)."""
    print("| process | sampler | mean err 10 / 100 | std err 10 / 20 / 50 / 100 | std 10/100 ratio |")
    print("|---|---|---|---|---:|")
    for pair in PAIRS:
        errs = {n: moment_errors(*pair[:4], n) for n in (10, 20, 50, 100)}
        std = " / ".join(f"{100 * errs[n][1]:.3f}%" for n in errs)
        print(f"| {pair_id(pair).split('-', 1)[0]} | {pair_id(pair).split('-', 1)[1]} | "
              f"{100 * errs[10][0]:.3f}% / {100 * errs[100][0]:.3f}% | {std} | {errs[10][1] / errs[100][1]:.1f} |",
              flush=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--table"]:
        sys.exit("usage: python tests/diffusion/test_sampler_space.py --table")
    print_table()

"""Schedules, posterior tables and respacing, checked against diffusers and closed forms."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ditlab.diffusion import create_process
from ditlab.diffusion.schedules import SpacedSchedule, beta_schedule, space_timesteps
from ditlab.errors import ProcessError

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)

DIFFUSERS_SCHEDULES = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}


@pytest.mark.parametrize("schedule", list(DIFFUSERS_SCHEDULES))
def test_tables_equal_diffusers_ddpm_scheduler(schedule):
    p = create_process("ddpm", schedule=schedule, num_timesteps=1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, **DIFFUSERS_SCHEDULES[schedule])
    # diffusers builds its tables in float32; ours are float64.
    np.testing.assert_allclose(p.betas.numpy(), ref.betas.numpy(), rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(p.alphas_cumprod.numpy(), ref.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-9)
    ref.set_timesteps(1000)
    ts = list(range(1, 1000, 7))
    ref_post = np.array([float(ref._get_variance(t, variance_type="fixed_small")) for t in ts])
    # float32 1 - alpha_bar near t = 0 limits diffusers' precision to ~4e-4 relative there.
    np.testing.assert_allclose(p.full.posterior_variance[ts].numpy(), ref_post, rtol=1e-3)
    assert p.full.posterior_variance[0] == 0


def test_linear_schedule_end_points_and_scaling():
    betas = beta_schedule("linear", 1000)
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)
    # ADM scales the end points by 1000 / T so that short chains reach the same noise level.
    short = beta_schedule("linear", 100)
    assert float(short[0]) == pytest.approx(1e-3) and float(short[-1]) == pytest.approx(0.2)


def test_cosine_alpha_bar_closed_form():
    T = 1000
    acp = torch.cumprod(1 - beta_schedule("cosine", T), 0)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = torch.cos((t / T + 0.008) / 1.008 * torch.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    # Equal until the 0.999 clip on the last betas takes effect.
    np.testing.assert_allclose(acp[:990].numpy(), f[:990].numpy(), rtol=1e-10)


def test_posterior_mean_and_variance_closed_form():
    """q(x_{t-1} | x_t, x0) from Bayes' rule on the two Gaussians, computed independently."""
    p = create_process("ddpm")
    t = 400
    a_bar, a_bar_prev, beta = (float(v) for v in (p.alphas_cumprod[t], p.alphas_cumprod[t - 1], p.betas[t]))
    x0, x_t = torch.randn(2, 3, dtype=torch.float64).unbind(0)
    # p(x_{t-1} | x0) = N(sqrt(a_prev) x0, 1 - a_prev); p(x_t | x_{t-1}) = N(sqrt(1 - beta) x_{t-1}, beta).
    precision = 1 / (1 - a_bar_prev) + (1 - beta) / beta
    mean = (np.sqrt(a_bar_prev) * x0 / (1 - a_bar_prev) + np.sqrt(1 - beta) * x_t / beta) / precision
    got_mean, got_var, got_log_var = p.q_posterior(x0[None], x_t[None], torch.tensor([t]))
    torch.testing.assert_close(got_mean[0], mean)
    assert float(got_var) == pytest.approx(1 / precision, rel=1e-10)
    assert float(got_log_var) == pytest.approx(np.log(1 / precision), rel=1e-10)


def test_respacing_strings():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    kept = space_timesteps(1000, "250")
    gaps = np.diff(kept)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999 and set(gaps) <= {4, 5}
    sections = space_timesteps(300, "10,15,20")
    assert len(sections) == 45
    assert sum(k < 100 for k in sections) == 10 and sum(100 <= k < 200 for k in sections) == 15
    assert {0, 99, 100, 199, 200, 299} <= set(sections)
    assert space_timesteps(1000, 1000) == list(range(1000))
    for bad in ("ddim0", "1001", "abc", "10,0", "ddim999"):
        with pytest.raises(ProcessError):
            space_timesteps(1000, bad)


def test_respaced_chain_keeps_alpha_bar_and_full_chain_keeps_betas():
    p = create_process("ddpm")
    full = SpacedSchedule.from_alphas_cumprod(p.alphas_cumprod, list(range(1000)))
    np.testing.assert_allclose(full.betas.numpy(), p.betas.numpy(), rtol=1e-9)
    s = p.spaced("ddim50")
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), p.alphas_cumprod[::20].numpy(), rtol=1e-12)
    # Respaced betas compose to the same cumulative product (ADM's SpacedDiffusion).
    np.testing.assert_allclose(torch.cumprod(1 - s.betas, 0).numpy(), s.alphas_cumprod.numpy(), rtol=1e-10)


def test_integer_steps_spacing_per_sampler():
    p = create_process("ddpm")
    assert p.spaced(250, "ddpm").timesteps.tolist() == space_timesteps(1000, "250")
    want = np.linspace(0, 999, 21).round()[1:].astype(int).tolist()  # diffusers' "linspace" spacing
    assert p.spaced(20, "ddim").timesteps.tolist() == want
    assert p.spaced("linspace20", "dpmpp_2m").timesteps.tolist() == want
    assert p.spaced("ddim50", "dpmpp_2m").timesteps.tolist() == list(range(0, 1000, 20))
    # Uniform in log-SNR: equal lambda gaps up to the rounding to integer steps.
    kept = p.spaced("logsnr20").timesteps
    assert len(kept) == 20 and kept[-1] == 999
    lam = (0.5 * torch.log(p.alphas_cumprod / (1 - p.alphas_cumprod))).numpy()
    step = (lam[0] - lam[999]) / 20
    np.testing.assert_allclose(-np.diff(lam[kept.numpy()])[3:], step, rtol=0.15)
    # DPM-Solver++ defaults: cubic in time for the linear schedule, linspace for cosine.
    cubic = [round(999 * (i / 10) ** 3) for i in range(1, 11)]
    assert p.spaced(10, "dpmpp_2m").timesteps.tolist() == cubic
    assert p.spaced("quad10").timesteps.tolist() == [round(999 * (i / 10) ** 2) for i in range(1, 11)]
    cosine = create_process("ddpm", schedule="cosine")
    assert cosine.spaced(10, "dpmpp_2m").timesteps.tolist() == np.linspace(0, 999, 11).round()[1:].astype(int).tolist()
    # Collisions of rounded points move up, so the count is always exact.
    for n in (20, 500, 1000):
        kept = p.spaced(n, "dpmpp_2m").timesteps
        assert len(set(kept.tolist())) == n and kept.max() == 999
    for bad in ("logsnr0", "linspace2000", "logsnrx", "cubic0", "quad"):
        with pytest.raises(ProcessError):
            p.spaced(bad)


def test_extract_gathers_on_the_index_device_from_one_cached_copy():
    import gc

    from ditlab.diffusion import schedules

    table = torch.linspace(0, 1, 10, dtype=torch.float64)
    like = torch.zeros(3, 2, 2)
    idx = torch.tensor([0, 4, 9])
    got = schedules.extract(table, idx, like)
    assert got.shape == (3, 1, 1) and got.dtype == torch.float32
    assert got.flatten().tolist() == table[idx].float().tolist()
    assert table not in schedules._DEVICE_TABLES  # same device: no copy
    meta = schedules.extract(table, idx.to("meta"), like.to("meta"))  # another device: a copy of the table there
    assert meta.is_meta and meta.shape == (3, 1, 1)
    copies = schedules._DEVICE_TABLES[table]
    assert list(copies) == [torch.device("meta")]
    schedules.extract(table, idx.to("meta"), like.to("meta"))
    assert schedules._DEVICE_TABLES[table] is copies and len(copies) == 1  # made once
    n = len(schedules._DEVICE_TABLES)
    del table, copies
    gc.collect()
    assert len(schedules._DEVICE_TABLES) == n - 1  # dropped with its table


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_loss_on_cuda_records_as_a_cuda_graph():
    """No host round trip in the DDPM loss: it can be captured (a blocking copy would raise)."""
    p = create_process("ddpm", learn_sigma=True)
    x0 = torch.randn(4, 4, 8, 8, device="cuda")
    t = torch.randint(0, 1000, (4,), device="cuda")
    noise = torch.randn_like(x0)
    model = lambda x, tt, **kw: torch.cat([x, torch.tanh(x)], dim=1)  # noqa: E731
    want = p.training_loss(model, x0, t=t, noise=noise)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = p.training_loss(model, x0, t=t, noise=noise)
    graph.replay()
    torch.testing.assert_close(got, want)

"""The variational bound: Gaussian KL, discretised decoder NLL and the hybrid loss, against hand computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ditlab.diffusion import create_process
from ditlab.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl


def test_normal_kl_equals_numerical_integral():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(1.7)
    p, q = stats.norm(m1, math.exp(lv1 / 2)), stats.norm(m2, math.exp(lv2 / 2))
    want, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -20, 20)
    got = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2)))
    assert float(got) == pytest.approx(want, rel=1e-8)


def test_discretized_log_likelihood_equals_bin_masses():
    x = torch.tensor([-1.0, -0.5, 0.0, 2 / 255, 0.75, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, -0.45, 0.1, 0.0, 0.8, 0.95], dtype=torch.float64)
    log_scale = torch.log(torch.tensor([0.1, 0.05, 0.2, 0.01, 0.3, 0.02], dtype=torch.float64))
    got = discretized_gaussian_log_likelihood(x, mean, log_scale).numpy()
    sd = log_scale.exp().numpy()
    xs, ms = x.numpy(), mean.numpy()
    # Bins of width 2/255 centred on the data; the end bins reach -inf and +inf.
    upper = np.where(xs > 0.999, np.inf, xs + 1 / 255)
    lower = np.where(xs < -0.999, -np.inf, xs - 1 / 255)
    want = np.log(stats.norm.cdf(upper, ms, sd) - stats.norm.cdf(lower, ms, sd))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def _hand_vlb(p, x0, x_t, t, eps_hat, var_values):
    """The VLB term of one sample in bits/dim, from the betas alone (numpy, float64)."""
    betas = p.betas.numpy()
    acp = np.cumprod(1 - betas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1 - acp_prev) / (1 - acp)
    log_post_clipped = np.log(np.append(post_var[1], post_var[1:]))
    x0_hat = (x_t - np.sqrt(1 - acp[t]) * eps_hat) / np.sqrt(acp[t])

    def post_mean(x_start):
        return (np.sqrt(acp_prev[t]) * betas[t] * x_start
                + np.sqrt(1 - betas[t]) * (1 - acp_prev[t]) * x_t) / (1 - acp[t])

    frac = (var_values + 1) / 2
    model_log_var = frac * np.log(betas[t]) + (1 - frac) * log_post_clipped[t]
    m_true, m_model = post_mean(x0), post_mean(x0_hat)
    if t == 0:
        sd = np.exp(0.5 * model_log_var)
        upper = np.where(x0 > 0.999, np.inf, x0 + 1 / 255)
        lower = np.where(x0 < -0.999, -np.inf, x0 - 1 / 255)
        return -np.mean(np.log(stats.norm.cdf(upper, m_model, sd) - stats.norm.cdf(lower, m_model, sd))) / np.log(2)
    lv_true = log_post_clipped[t]
    kl = 0.5 * (-1 + model_log_var - lv_true + np.exp(lv_true - model_log_var)
                + (m_true - m_model) ** 2 * np.exp(-model_log_var))
    return np.mean(kl) / np.log(2)


def test_hybrid_loss_equals_mse_plus_hand_vlb():
    torch.manual_seed(0)
    p = create_process("ddpm", num_timesteps=1000, learn_sigma=True)
    x0 = torch.rand(4, 2, 3, 3, dtype=torch.float64) * 2 - 1
    x0[0, 0, 0, 0], x0[0, 1, 0, 0] = -1.0, 1.0  # hit both edge bins of the decoder
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 300, 999])
    out = torch.randn(4, 4, 3, 3, dtype=torch.float64) * 0.5
    out[:, 2:] = out[:, 2:].clamp(-1, 1)
    loss = p.training_loss(lambda x, tt: out, x0, None, t=t, noise=noise)
    x_t = p.q_sample(x0, t, noise)
    for i in range(4):
        mse = float(((out[i, :2] - noise[i]) ** 2).mean())
        vlb = _hand_vlb(p, x0[i].numpy(), x_t[i].numpy(), int(t[i]), out[i, :2].numpy(), out[i, 2:].numpy())
        assert float(loss[i]) == pytest.approx(mse + vlb, rel=1e-9)


def test_vlb_trains_variance_only():
    """The mean sees only L_simple's gradient (the VLB term uses a stop-gradient mean)."""
    p = create_process("ddpm", learn_sigma=True)
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([0, 50, 700])
    out = torch.randn(3, 4, 4, 4, requires_grad=True)
    p.training_loss(lambda x, tt: out, x0, None, t=t, noise=noise).sum().backward()
    mse_grad = 2 * (out[:, :2] - noise).detach() / (2 * 4 * 4)
    torch.testing.assert_close(out.grad[:, :2], mse_grad)
    assert out.grad[:, 2:].abs().sum() > 0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_recover_x0_and_eps(prediction):
    """Feeding the exact training target back in gives x0 and eps exactly."""
    p = create_process("ddpm", prediction=prediction, learn_sigma=False, schedule="cosine")
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    noise, t = torch.randn_like(x0), torch.tensor([0, 400, 999])
    x_t = p.q_sample(x0, t, noise)
    pred = p.predict(p.training_target(x0, t, noise), x_t, t)
    torch.testing.assert_close(pred.x0, x0)
    torch.testing.assert_close(pred.eps, noise)
    # The loss is zero for the perfect prediction.
    zero = p.training_loss(lambda x, tt: p.training_target(x0, t, noise), x0, None, t=t, noise=noise)
    assert float(zero.abs().max()) < 1e-20

"""Rectified flow: training-time distributions of t, the SD3 shift, the sampling grid."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ditlab.diffusion import create_process
from ditlab.diffusion.flow import shift_time
from ditlab.errors import ProcessError

N = 100_000


def draw(process) -> np.ndarray:
    torch.manual_seed(0)
    return process.sample_t(N).double().numpy()


def test_uniform_times():
    assert stats.kstest(draw(create_process("flow", time_sampling="uniform")), "uniform").statistic < 0.006


def test_logit_normal_times_match_the_sd3_density():
    t = draw(create_process("flow", time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8))
    # logit(t) ~ N(m, s^2) (Esser et al. 2024, eq. 19).
    cdf = lambda x: stats.norm.cdf((np.log(x) - np.log1p(-x) - 0.5) / 0.8)  # noqa: E731
    assert stats.kstest(t, cdf).statistic < 0.006


def test_mode_times_match_the_sd3_quantiles():
    s = 1.29
    t = draw(create_process("flow", time_sampling="mode", mode_scale=s))
    # t = f(u) with u uniform and f decreasing, so the q-quantile of t is f(1 - q) (SD3 eq. 20).
    q = np.linspace(0.05, 0.95, 19)
    u = 1 - q
    want = 1 - u - s * (np.cos(np.pi / 2 * u) ** 2 - 1 + u)
    np.testing.assert_allclose(np.quantile(t, q), want, atol=0.006)
    assert t.min() >= 0 and t.max() <= 1


def test_shift_moves_times_towards_noise():
    t = draw(create_process("flow", time_sampling="uniform", shift=3.0))
    # t' = 3u / (1 + 2u) has CDF x / (3 - 2x).
    assert stats.kstest(t, lambda x: x / (3 - 2 * x)).statistic < 0.006
    x = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_time(x, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_sampling_grid():
    times = create_process("flow", shift=3.0).sampling_times(4)
    torch.testing.assert_close(times, shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64), 3.0))
    assert times[0] == 1 and times[-1] == 0


def test_heun_uses_two_evaluations_per_step_and_euler_maruyama_one():
    p = create_process("flow")
    for sampler, per_step in (("euler", 1), ("heun", 2), ("euler_maruyama", 1)):
        calls = []

        def model(x, t, calls=calls):
            calls.append(float(t[0]))
            return x

        p.sample(model, torch.randn(2, 3), sampler=sampler, steps=5)
        assert len(calls) == per_step * 5


def test_flow_option_errors():
    for bad in ({"shift": 0.0}, {"logit_std": -1.0}, {"mode_scale": 3.0}, {"time_sampling": "beta"}):
        with pytest.raises(ProcessError):
            create_process("flow", **bad)
    with pytest.raises(ProcessError, match="noise_scale"):
        create_process("flow").sample(lambda x, t: x, torch.randn(2, 3), sampler="euler",
                                      sampler_options={"noise_scale": 1.0})
    assert math.isclose(create_process("flow", shift=2).to_dict()["shift"], 2.0)

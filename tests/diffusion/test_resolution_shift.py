"""Flow matching's resolution-dependent time shift (SD3 eq. 23): shift * sqrt(h w / base^2), in training and in
the sampling grid; the same process without a base is unchanged."""
from __future__ import annotations

import math

import pytest
import torch

from ditlab.diffusion import create_process
from ditlab.diffusion.flow import shift_time
from ditlab.errors import ProcessError


def test_shift_grows_with_the_square_root_of_the_token_count():
    p = create_process("flow", shift=1.5, shift_base=16)
    assert p.shift_for((4, 16, 16)) == 1.5
    assert p.shift_for((4, 32, 32)) == pytest.approx(3.0)
    assert p.shift_for((4, 16, 64)) == pytest.approx(3.0)  # tokens, not sides: 16 x 64 = 32 x 32
    assert create_process("flow", shift=1.5).shift_for((4, 64, 64)) == 1.5
    assert create_process(**p.to_dict()).shift_base == 16
    with pytest.raises(ProcessError, match="shift_base must be an int >= 0"):
        create_process("flow", shift_base=-1)


def test_shift_maps_compose_by_multiplying_the_odds():
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64)
    torch.testing.assert_close(shift_time(shift_time(t, 1.5), 2.0), shift_time(t, 3.0))


def _recorder(seen):
    def model(x, t, **kw):
        seen.append(t.clone())
        return torch.zeros_like(x)

    return model


def test_training_moves_the_times_to_the_latents_resolution():
    t = torch.tensor([0.1, 0.5, 0.9])
    for side, factor in ((8, 1.0), (16, 2.0)):
        seen = []
        x0 = torch.zeros(3, 4, side, side)
        create_process("flow", shift=3.0, shift_base=8).training_loss(_recorder(seen), x0, t=t,
                                                                       noise=torch.zeros_like(x0))
        torch.testing.assert_close(seen[0], shift_time(t, factor))
        seen.clear()
        create_process("flow", shift=3.0).training_loss(_recorder(seen), x0, t=t, noise=torch.zeros_like(x0))
        torch.testing.assert_close(seen[0], t)  # no base: the times as given


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_the_sampling_grid_is_the_fixed_shift_grid_of_that_resolution(sampler):
    noise = torch.randn(2, 4, 6, 24)  # 144 elements = 12^2: shift 2 * sqrt(144 / 36) = 4
    got, ref = [], []
    create_process("flow", shift=2.0, shift_base=6).sample(_recorder(got), noise, sampler=sampler, steps=5)
    create_process("flow", shift=4.0).sample(_recorder(ref), noise, sampler=sampler, steps=5)
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert math.isclose(create_process("flow", shift=2.0, shift_base=6).shift_for(noise.shape), 4.0)

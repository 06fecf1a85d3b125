"""Classifier-free guidance: one batched forward, the combination rule, DiT's 3-channel variant, intervals."""
from __future__ import annotations

import pytest
import torch

from ditlab.diffusion import classifier_free_guidance, create_process, per_sample_generators, per_sample_noise
from ditlab.errors import ProcessError


class Recorder:
    """A fake network: output depends on x, t and the label; records every call."""

    def __init__(self, out_channels_factor: int = 1):
        self.calls = []
        self.factor = out_channels_factor

    def __call__(self, x, t, y):
        self.calls.append((x.clone(), t.clone(), y.clone()))
        lab = y.float().reshape(-1, 1, 1, 1)
        out = torch.cat([torch.sin(x + lab) * 0.5 + 0.01 * t.reshape(-1, 1, 1, 1) / 1000] * self.factor, dim=1)
        if self.factor == 2:
            out[:, x.shape[1]:] = torch.tanh(lab / 3 + 0.1 * x)  # variance values, label-dependent
        return out


def test_one_batched_forward_cond_first_and_the_combination_rule():
    model = Recorder(2)
    x, t = torch.randn(3, 4, 2, 2), torch.full((3,), 500.0)
    y, null = torch.tensor([1, 2, 3]), torch.full((3,), 10)
    guided = classifier_free_guidance(model, {"y": y}, cfg_scale=4.0, uncond_model_kwargs={"y": null})
    out = guided(x, t)
    assert len(model.calls) == 1
    xs, ts, ys = model.calls[0]
    assert (torch.equal(xs, torch.cat([x, x])) and torch.equal(ys, torch.cat([y, null]))
            and torch.equal(ts, torch.cat([t, t])))
    cond, uncond = model(x, t, y), model(x, t, null)
    torch.testing.assert_close(out[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])  # the variance comes from the conditional half


def official_dit_forward_with_cfg(model, x, t, y, cfg_scale):
    """What DiT's models.py forward_with_cfg computes, written from its description: the batch is
    [cond; uncond] on the first half's x, guidance on channels :3, the rest (4th latent channel and
    variance) kept per half."""
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half]), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)


def test_guidance_channels_3_reproduces_the_official_dit_sampler():
    p = create_process("ddpm")
    model = Recorder(2)
    seeds, y = [3, 4], torch.tensor([5, 6])
    null = torch.full((2,), 1000)
    gens = per_sample_generators(seeds)
    ours = p.sample(model, per_sample_noise((4, 2, 2), gens), sampler="ddpm", steps=8, model_kwargs={"y": y},
                    cfg_scale=4.0, uncond_model_kwargs={"y": null}, guidance_channels=3, generators=gens)
    # The official sampler runs the doubled batch through the sampler with guidance inside the model.
    gens2 = per_sample_generators(seeds + [90, 91])
    z = per_sample_noise((4, 2, 2), gens2[:2])
    both = torch.cat([z, per_sample_noise((4, 2, 2), gens2[2:])])

    def doubled(x, t, y):
        return official_dit_forward_with_cfg(model, x, t, y, 4.0)

    theirs = p.sample(doubled, both, sampler="ddpm", steps=8, model_kwargs={"y": torch.cat([y, null])},
                      generators=gens2)
    torch.testing.assert_close(ours, theirs[:2])
    # Guiding all channels (the default) differs in the 4th channel.
    all_channels = p.sample(model, z, sampler="ddim", steps=8, model_kwargs={"y": y}, cfg_scale=4.0,
                            uncond_model_kwargs={"y": null})
    three = p.sample(model, z, sampler="ddim", steps=8, model_kwargs={"y": y}, cfg_scale=4.0,
                     uncond_model_kwargs={"y": null}, guidance_channels=3)
    # The fake network acts channel by channel, so the first 3 channels agree and only the 4th differs.
    torch.testing.assert_close(all_channels[:, :3], three[:, :3])
    assert not torch.allclose(all_channels[:, 3], three[:, 3])


def test_scale_one_is_one_plain_forward():
    model = Recorder()
    p = create_process("flow")
    p.sample(model, torch.randn(3, 2, 2, 2), steps=4, model_kwargs={"y": torch.ones(3)},
             uncond_model_kwargs={"y": torch.zeros(3)})
    assert [c[0].shape[0] for c in model.calls] == [3] * 4


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_guidance_interval(kind):
    p = create_process(kind, **({"learn_sigma": False} if kind == "ddpm" else {}))
    model = Recorder()
    y, null = torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    p.sample(model, torch.randn(2, 2, 2, 2), sampler="ddim" if kind == "ddpm" else "euler", steps=10,
             model_kwargs={"y": y}, cfg_scale=3.0, uncond_model_kwargs={"y": null}, guidance_interval=(0.25, 0.65))
    scale = 999.0 if kind == "ddpm" else 1.0
    for x, t, ys in model.calls:
        tau = float(t[0]) / scale
        inside = 0.25 <= tau <= 0.65
        assert x.shape[0] == (4 if inside else 2), tau
        assert torch.equal(ys, torch.cat([y, null]) if inside else y)
    assert any(c[0].shape[0] == 4 for c in model.calls) and any(c[0].shape[0] == 2 for c in model.calls)


def test_guidance_interval_is_per_sample():
    model = Recorder()
    guided = classifier_free_guidance(model, {"y": torch.ones(2)}, cfg_scale=3.0,
                                      uncond_model_kwargs={"y": torch.zeros(2)}, guidance_interval=(0.0, 0.5))
    x, t = torch.randn(2, 2, 2, 2), torch.tensor([0.3, 0.8])
    out = guided(x, t)
    c, u = model(x, t, torch.ones(2)), model(x, t, torch.zeros(2))
    torch.testing.assert_close(out[0], (u + 3 * (c - u))[0])
    torch.testing.assert_close(out[1], c[1])


def test_guidance_errors():
    p = create_process("ddpm")
    x = torch.randn(2, 4, 2, 2)
    model = Recorder(2)
    with pytest.raises(ProcessError, match="guidance_channels"):
        p.sample(model, x, model_kwargs={"y": torch.ones(2)}, cfg_scale=2.0,
                 uncond_model_kwargs={"y": torch.zeros(2)}, guidance_channels=5)
    with pytest.raises(ProcessError, match="keys"):
        p.sample(model, x, steps=2, model_kwargs={"y": torch.ones(2)}, cfg_scale=2.0,
                 uncond_model_kwargs={"z": torch.zeros(2)})

"""Every process x sampler pair, with and without guidance, samples (N, C, F, H, W) latents through the one
Pipeline, unchanged: per-sample seeds, the step callback's decoded clips, guidance with the null class."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ditlab.autoencoders import PixelAutoencoder
from ditlab.conditioning import ClassCondition
from ditlab.diffusion import create_process
from ditlab.models import create_model
from ditlab.sampling import Pipeline

PAIRS = [(kind, s) for kind in ("ddpm", "flow") for s in create_process(kind).samplers]


def _pipe(kind: str) -> Pipeline:
    torch.manual_seed(0)
    process = create_process(kind)
    model = create_model("DiT-Test/2", input_size=8, in_channels=1, num_classes=3, learn_sigma=process.learn_sigma,
                         num_frames=3, hidden_size=32, num_heads=2, timestep_scale=1000.0 if kind == "flow" else 1.0)
    with torch.no_grad():  # a network that is not the zero function at init
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    return Pipeline(model, process, PixelAutoencoder(1), ClassCondition(3), (1, 3, 8, 8))


@pytest.mark.parametrize("kind,sampler", PAIRS, ids=[f"{k}-{s}" for k, s in PAIRS])
def test_every_pair_samples_clips_with_guidance(kind, sampler):
    pipe = _pipe(kind)
    seen = []
    got = pipe(labels=[0, 2], num=3, sampler=sampler, steps=3, cfg_scale=2.0, seed=5, return_latents=True,
               callback=lambda s: seen.append(s.decode().shape))
    assert pipe.is_video and got.images.shape == (3, 3, 8, 8, 1) and got.images.dtype == np.uint8
    assert got.labels.tolist() == [0, 0, 2] and seen and seen[-1] == (3, 3, 8, 8, 1)
    single = pipe(labels=[0, 2], num=3, sampler=sampler, steps=3, cfg_scale=2.0, seed=5, batch_size=1)
    assert np.array_equal(got.images, single.images)  # per-sample seeds: batching does not matter
    plain = pipe(labels=[0, 2], num=3, sampler=sampler, steps=3, cfg_scale=1.0, seed=5, return_latents=True)
    assert plain.latents.shape == (3, 1, 3, 8, 8) and not torch.allclose(plain.latents, got.latents)  # guided

"""Determinism: a seed gives the same samples whatever the batch size and however the seeds are shared
out over processes; the same config and seed give the same training, loss for loss, on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from run_helpers import assert_identical, load_checkpoint, logged_losses

from ditlab.autoencoders import load_autoencoder
from ditlab.cli import main
from ditlab.conditioning import ClassCondition
from ditlab.diffusion import create_process
from ditlab.models import create_model
from ditlab.sampling import Pipeline
from ditlab.training import checkpoint as ckpt
from ditlab.training import logger

SEEDS = [11, 12, 13, 14, 15, 16, 17]
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 1])


def _random_dit(learn_sigma: bool) -> torch.nn.Module:
    """A tiny class-conditional DiT with every weight random (adaLN-Zero starts as the identity, which
    would make every sample the same)."""
    model = create_model("DiT-Test/2", input_size=8, in_channels=1, num_classes=3, learn_sigma=learn_sigma)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("kind,sampler", [("ddpm", "ddpm"), ("ddpm", "ddim"), ("flow", "euler_maruyama"),
                                          ("flow", "heun")])
def test_samples_do_not_depend_on_batch_size_or_process_count(kind, sampler):
    process = create_process(kind) if kind == "flow" else create_process("ddpm", learn_sigma=True)
    model, pixel = _random_dit(process.learn_sigma), load_autoencoder("pixel", channels=1)

    pipe = Pipeline(model, process, pixel, ClassCondition(3), (1, 8, 8))

    def run(seeds, labels, batch_size):  # sample i of seed 0 has noise seed i
        return pipe(labels=labels.tolist(), num=len(seeds), indices=seeds, sampler=sampler, steps=6, cfg_scale=2.0,
                    batch_size=batch_size).images

    torch.manual_seed(0)
    whole = run(SEEDS, LABELS, batch_size=len(SEEDS))  # (7, 8, 8, 1) uint8
    assert whole.shape == (7, 8, 8, 1) and len({whole[i].tobytes() for i in range(7)}) == 7  # all differ
    for batch_size in (1, 3):
        torch.manual_seed(batch_size)  # the global RNG must play no part
        assert np.array_equal(run(SEEDS, LABELS, batch_size), whole), f"batch size {batch_size}"
    for world in (2, 3):  # rank r samples seeds r, r + world, ... in its own process (own global RNG state)
        parts = {}
        for rank in range(world):
            torch.manual_seed(1000 + rank)
            parts[rank] = run(SEEDS[rank::world], LABELS[rank::world], batch_size=2)
        joined = np.empty_like(whole)
        for rank in range(world):
            joined[rank::world] = parts[rank]
        assert np.array_equal(joined, whole), f"{world} processes"
    # and a different seed is a different sample
    assert not np.array_equal(run([99] + SEEDS[1:], LABELS, batch_size=7)[0], whole[0])


def test_same_config_and_seed_train_the_same_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(logger, "_fmt", lambda v: repr(v) if isinstance(v, float) else v)  # full precision
    args = ["train", "--preset", "digits-tiny", "--global_batch_size", "16", "--steps", "4", "--log_every", "1"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main([*args, "--seed", str(seed), "--run_dir", str(tmp_path / name)]) == 0
    a, b, c = (logged_losses(tmp_path / n) for n in "abc")
    assert len(a) == 4 and a == b
    assert [loss for _, loss in a] != [loss for _, loss in c]  # the seed matters
    final = [load_checkpoint(ckpt.latest_checkpoint(tmp_path / n)) for n in "ab"]
    assert_identical(final[0], final[1])

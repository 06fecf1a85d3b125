"""World-size invariance in one process: every random draw of a step and every data slice is global.

Ranks are simulated by slicing; what the ranks compute together must be what one process computes.
"""
import pytest
import torch

from ditlab.conditioning import ClassCondition
from ditlab.diffusion import create_process
from ditlab.seeding import Stream, derive_seed
from ditlab.training.data_source import BatchOrder, InMemorySource
from ditlab.training.distributed import StepDraws, draw_step

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_step_draws_are_a_pure_function_of_seed_and_step(kind):
    process = create_process(kind)
    a = draw_step(process, 3, 17, 12, (4, 2, 2), CPU, drop_prob=0.25)
    b = draw_step(process, 3, 17, 12, (4, 2, 2), CPU, drop_prob=0.25)
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise) and torch.equal(a.drop, b.drop)
    other_step = draw_step(process, 3, 18, 12, (4, 2, 2), CPU, drop_prob=0.25)
    other_seed = draw_step(process, 4, 17, 12, (4, 2, 2), CPU, drop_prob=0.25)
    assert not torch.equal(a.noise, other_step.noise) and not torch.equal(a.noise, other_seed.noise)
    assert a.noise.shape == (12, 4, 2, 2) and a.t.shape == (12,) and a.drop.dtype == torch.bool
    if kind == "ddpm":
        assert a.t.dtype == torch.long and int(a.t.min()) >= 0 and int(a.t.max()) < 1000
    else:
        assert a.t.is_floating_point() and float(a.t.min()) > 0 and float(a.t.max()) < 1
    # the global RNG is neither used nor moved
    state = torch.get_rng_state()
    draw_step(process, 3, 17, 12, (4, 2, 2), CPU, drop_prob=0.25)
    assert torch.equal(state, torch.get_rng_state())


def test_draw_statistics_follow_the_process():
    """t uniform over [0, 1000) (mean 499.5), noise standard normal, dropout at the asked rate."""
    d = draw_step(create_process("ddpm"), 0, 0, 40_000, (1,), CPU, drop_prob=0.1)
    assert abs(d.t.float().mean().item() - 499.5) < 6  # sd of the mean 1.44
    assert abs(d.noise.mean().item()) < 0.02 and abs(d.noise.std().item() - 1) < 0.02
    assert abs(d.drop.float().mean().item() - 0.1) < 0.006  # sd 0.0015


def test_rank_slices_tile_the_global_draw():
    d = draw_step(create_process("flow"), 0, 5, 8, (3, 4, 4), CPU, drop_prob=0.5)
    for world in (1, 2, 4):
        local = 8 // world
        parts = [d.local(r * local, local) for r in range(world)]
        assert torch.equal(torch.cat([p.noise for p in parts]), d.noise)
        assert torch.equal(torch.cat([p.t for p in parts]), d.t)
        assert torch.equal(torch.cat([p.drop for p in parts]), d.drop)
        assert torch.equal(torch.cat([p.choice for p in parts]), d.choice)


def test_condition_drop_uses_the_null_class():
    condition = ClassCondition(10)
    cond = {"y": torch.tensor([1, 2, 3, 4])}
    assert condition.drop(cond, torch.tensor([True, False, False, True]))["y"].tolist() == [10, 2, 3, 10]
    assert condition.drop(cond, None) is cond
    assert StepDraws(torch.zeros(2), torch.zeros(2, 1), None, torch.zeros(2)).local(1, 1).drop is None


def test_step_seeds_do_not_collide():
    seeds = {derive_seed(s, k, Stream.STEP) for s in range(20) for k in range(500)}
    assert len(seeds) == 20 * 500 and all(0 <= v < 2**63 for v in seeds)


@pytest.mark.parametrize("flip", [False, True])
def test_ranks_together_read_what_one_process_reads(flip):
    latents = torch.randn(50, 2, 4, 4)
    labels = torch.arange(50) % 7
    order = BatchOrder(50, 12, seed=3)
    one = InMemorySource(latents, {"y": labels}, order, rank=0, local_batch=12, device=CPU, flip=flip)
    ranks = [InMemorySource(latents, {"y": labels}, BatchOrder(50, 12, seed=3), rank=r, local_batch=4, device=CPU,
                            flip=flip) for r in range(3)]
    for _ in range(6):  # crosses an epoch boundary (4 batches per epoch)
        x, records = one.next()
        parts = [src.next() for src in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1]["y"] for p in parts]), records["y"])
    if flip:  # flips happen, and they are the same after a "resume" at batch 2
        flips = torch.stack([order.flips(k) for k in range(6)])
        assert 0 < flips.float().mean() < 1
        assert torch.equal(BatchOrder(50, 12, seed=3).flips(2), flips[2])

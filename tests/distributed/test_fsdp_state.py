"""FSDP2 state handling in one process (a 1-rank gloo group): sharded training gives the plain numbers,
and its full optimiser state has exactly the single-process layout, both ways."""
import copy

import pytest
import torch
import torch.distributed as dist

from ditlab.models import create_model
from ditlab.training.distributed import (
    DistInfo,
    fsdp_shard,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_model_state,
    load_optimizer_state,
)
from ditlab.training.ema import EMA


@pytest.fixture
def group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already active in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield DistInfo(rank=0, world_size=1, device=torch.device("cpu"), owns_group=True)
    finally:
        dist.destroy_process_group()


def _step(model, optimizer, ema, seed):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.rand(3, generator=g) * 999
    y = torch.randint(0, 5, (3,), generator=g)
    loss = (model(x, t, y) - 0.3).square().mean()
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    optimizer.step()
    ema.update(model, seed)
    return loss.item()


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def test_sharded_training_and_state_round_trip(group):
    torch.manual_seed(0)
    plain = create_model("DiT-Test/2", input_size=8, num_classes=5)
    torch.nn.init.normal_(plain.final_layer.linear.weight, std=0.02)  # let gradients reach every layer
    sharded = copy.deepcopy(plain)
    ema_p, ema_s = EMA(plain, decay=0.9), EMA(sharded, decay=0.9)
    fsdp_shard(sharded, group)
    fsdp_shard(ema_s.shadow, group)
    assert is_sharded(sharded) and is_sharded(ema_s.shadow) and not is_sharded(plain)
    opt_p = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    opt_s = torch.optim.AdamW(sharded.parameters(), lr=1e-2)
    for seed in range(3):
        assert _step(plain, opt_p, ema_p, seed) == pytest.approx(_step(sharded, opt_s, ema_s, seed), rel=1e-5)

    _close(full_model_state(sharded), plain.state_dict())
    _close(full_model_state(ema_s.shadow), ema_p.shadow.state_dict())
    full = full_optimizer_state(sharded, opt_s)
    ref = opt_p.state_dict()
    assert full["param_groups"] == ref["param_groups"]  # same numbering, same hyper-parameters
    assert sorted(full["state"]) == sorted(ref["state"]) and len(ref["state"]) > 10
    for i, s in ref["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.allclose(full["state"][i][key], s[key], atol=1e-7, rtol=1e-5), (i, key)

    # a plain run's checkpoint loads into a fresh sharded model, which then continues identically
    fresh = create_model("DiT-Test/2", input_size=8, num_classes=5)
    fresh_ema = EMA(fresh, decay=0.9)
    fsdp_shard(fresh, group)
    fsdp_shard(fresh_ema.shadow, group)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    # deep copies: a checkpoint read from disk shares no storage with the running optimiser
    load_model_state(fresh, copy.deepcopy(plain.state_dict()))
    load_model_state(fresh_ema.shadow, copy.deepcopy(ema_p.shadow.state_dict()))
    load_optimizer_state(fresh, fresh_opt, copy.deepcopy(ref))
    assert _step(plain, opt_p, ema_p, 7) == pytest.approx(_step(fresh, fresh_opt, fresh_ema, 7), rel=1e-5)
    _close(full_model_state(fresh), plain.state_dict())
    _close(full_model_state(fresh_ema.shadow), ema_p.shadow.state_dict())

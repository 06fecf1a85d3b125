"""The backbone: a common test over every registered model, conditioning, options."""
from __future__ import annotations

import pytest
import torch

from ditlab.models import BLOCK_TYPES, create_model, list_models
from ditlab.models.blocks import BLOCK_KINDS

# text-only kinds are tested in tests/models/test_pixart.py
CLASS_BLOCKS = [b for b in BLOCK_TYPES if not BLOCK_KINDS[b].requires_text]

SMALL = [n for n in list_models() if n.startswith(("DiT-T/", "DiT-Test/"))]
BIG = [n for n in list_models() if n.startswith("DiT-") and n not in SMALL]  # other designs: their own tests


def _inputs(n=2, c=4, h=16, w=16, seed=0, num_classes=1000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    t = torch.rand(n, generator=g) * 999
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, t, y


def _train_until_all_grads(model, steps=3):
    """SGD steps on a regression target; returns the grads of the last backward.

    The zero-init chain of adaLN-Zero is three deep (decoder -> gates and final modulation ->
    attention/MLP branches and embedders), so every parameter sees a gradient at step three.
    """
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, t, y = _inputs(h=model.config.input_size[0], w=model.config.input_size[1],
                      num_classes=max(model.num_classes, 1))
    target = torch.randn(x.shape[0], model.out_channels, *x.shape[2:], generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x, t, y if model.num_classes else None) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", SMALL)
def test_common_small(name):
    torch.manual_seed(0)
    model = create_model(name, input_size=8)
    x, t, y = _inputs(h=8, w=8)
    out = model(x, t, y)
    assert out.shape == (2, 8, 8, 8)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out) == 0, "adaLN-Zero: a fresh model must predict zeros"
    grads = _train_until_all_grads(model)
    dead = [n for n, g in grads.items() if g is None or torch.count_nonzero(g) == 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert not model.pos_embed.requires_grad


@pytest.mark.parametrize("name", BIG)
def test_common_big_on_meta(name):
    model = create_model(name, device="meta")
    x = torch.empty(2, 4, 32, 32, device="meta")
    out = model(x, torch.empty(2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    assert out.shape == (2, 8, 32, 32) and out.is_meta


@pytest.mark.parametrize("block", CLASS_BLOCKS)
def test_every_block_design_starts_at_zero_and_trains(block):
    torch.manual_seed(0)
    model = create_model("DiT-Test/2", input_size=8, num_classes=10, block=block, qk_norm=True)
    x, t, y = _inputs(h=8, w=8, num_classes=10)
    assert torch.count_nonzero(model(x, t, y)) == 0
    grads = _train_until_all_grads(model)
    dead = [n for n, g in grads.items() if g is None or torch.count_nonzero(g) == 0]
    assert not dead, f"{block}: parameters without gradient: {dead}"
    model.eval()
    # once trained a little, the output depends on t and on y
    out = model(x, t, y)
    assert not torch.allclose(out, model(x, t + 100, y))
    assert not torch.allclose(out, model(x, t, (y + 1) % 10))


def test_block_parameter_layouts():
    d = 32
    counts = {b: sum(p.numel() for p in create_model("DiT-Test/2", input_size=8, depth=1, block=b)
                     .blocks.parameters()) for b in CLASS_BLOCKS}
    attn, mlp = (d * 3 * d + 3 * d) + (d * d + d), (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert counts["in-context"] == attn + mlp + 2 * 2 * d  # two affine layer norms
    assert counts["cross-attention"] == 2 * attn + mlp + 3 * 2 * d
    assert counts["adaLN"] == attn + mlp + d * 4 * d + 4 * d
    assert counts["adaLN-Zero"] == attn + mlp + d * 6 * d + 6 * d


def test_the_network_never_drops_labels(randomize):
    """Condition dropout lives in ditlab.conditioning (Condition.drop), not in the network: training and
    eval mode give the same output whatever the global RNG says."""
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10))
    x, t, _ = _inputs(n=20, h=8, w=8)
    y = torch.arange(10).repeat(2)
    model.train()
    torch.manual_seed(123)
    out_train = model(x, t, y)
    model.eval()
    torch.manual_seed(7)
    torch.testing.assert_close(out_train, model(x, t, y))
    assert not hasattr(model.y_embedder, "dropout_prob")


def test_null_label_and_none(randomize):
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10)).eval()
    x, t, y = _inputs(h=8, w=8, num_classes=10)
    null = torch.full_like(y, model.null_class)
    torch.testing.assert_close(model(x, t, None), model(x, t, null))
    unc = randomize(create_model("DiT-Test/2", input_size=8, num_classes=0)).eval()
    torch.testing.assert_close(unc(x, t, y), unc(x, t))


def test_timestep_scale_multiplies_t(randomize):
    a = randomize(create_model("DiT-Test/2", input_size=8, num_classes=0)).eval()
    b = create_model("DiT-Test/2", input_size=8, num_classes=0, timestep_scale=1000.0).eval()
    b.load_state_dict(a.state_dict())
    x, _, _ = _inputs(h=8, w=8)
    t01 = torch.tensor([0.25, 0.5])
    torch.testing.assert_close(b(x, t01), a(x, t01 * 1000))


def test_non_square_and_patch_one(randomize):
    model = randomize(create_model("DiT-Test/2", input_size=(6, 10), patch_size=1, num_classes=3)).eval()
    x, t, y = _inputs(h=6, w=10, num_classes=3)
    out = model(x, t, y)
    assert out.shape == (2, 8, 6, 10) and torch.isfinite(out).all()


def test_unpatchify_inverts_patchify_order():
    model = create_model("DiT-Test/2", input_size=(4, 6), in_channels=3, learn_sigma=False)
    p = 2
    img = torch.randn(2, 3, 4, 6)
    # patchify by hand: token (i, j) holds img[:, :, i*p:(i+1)*p, j*p:(j+1)*p] as (p, p, C)
    tokens = img.unfold(2, p, p).unfold(3, p, p)  # (N, C, gh, gw, p, p)
    tokens = tokens.permute(0, 2, 3, 4, 5, 1).reshape(2, 6, p * p * 3)
    torch.testing.assert_close(model.unpatchify(tokens, 2, 3), img)


def test_other_resolution_uses_closed_form_positions(randomize):
    from ditlab.models.layers import sincos_2d

    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=0)).eval()
    x, t, _ = _inputs(h=12, w=8)
    out = model(x, t)
    assert out.shape == (2, 8, 12, 8)
    # same as a model built for 12x8 with the same weights
    other = create_model("DiT-Test/2", input_size=(12, 8), num_classes=0).eval()
    sd = model.state_dict()
    sd["pos_embed"] = sincos_2d(32, 6, 4)[None]
    other.load_state_dict(sd)
    torch.testing.assert_close(other(x, t), out)


@pytest.mark.parametrize("block", ["adaLN-Zero", "cross-attention"])
def test_gradient_checkpointing_same_outputs_and_grads(block, randomize):
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10, block=block))
    x, t, y = _inputs(h=8, w=8, num_classes=10)

    def run():
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    out0, g0 = run()
    model.set_grad_checkpointing(True)
    assert model.config.grad_checkpointing
    out1, g1 = run()
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0, msg=n)
    ck = create_model("DiT-Test/2", input_size=8, grad_checkpointing=True)
    assert ck.grad_checkpointing


@pytest.mark.parametrize("n, blocks", [(1, 1), (2, 2), (-1, 3), (5, 3), (True, 3)])
def test_checkpointing_the_first_n_blocks_gives_identical_gradients(n, blocks, randomize, monkeypatch):
    import ditlab.models.dit as dit_module

    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10, depth=3))
    x, t, y = _inputs(h=8, w=8, num_classes=10)

    def run():
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    want = run()
    model.set_grad_checkpointing(n)
    assert model.checkpointed_blocks() == blocks
    calls = []
    original = dit_module.checkpoint
    monkeypatch.setattr(dit_module, "checkpoint", lambda fn, *a, **kw: calls.append(fn) or original(fn, *a, **kw))
    got = run()
    assert calls == list(model.blocks)[: model.checkpointed_blocks()]  # the first N blocks, in order
    assert torch.equal(got[0], want[0])
    for name in want[1]:
        assert torch.equal(got[1][name], want[1][name]), name
    with torch.no_grad():
        model(x, t, y)
    assert len(calls) == model.checkpointed_blocks()  # nothing is recomputed without gradients
    for off in (False, 0):
        model.set_grad_checkpointing(off)
        assert model.checkpointed_blocks() == 0


def test_compile_blocks_compiles_each_block_in_place(randomize):
    import torch._dynamo

    torch._dynamo.reset()
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10))
    x, t, y = _inputs(h=8, w=8, num_classes=10)
    want = model(x, t, y)
    keys = list(model.state_dict())
    assert model.compile_blocks(backend="aot_eager", fullgraph=True) is model
    assert all(blk._compiled_call_impl is not None for blk in model.blocks)
    torch.testing.assert_close(model(x, t, y), want)
    assert list(model.state_dict()) == keys  # checkpoints unchanged: no _orig_mod. prefixes


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_forward_compiles_as_one_graph(train, randomize):
    import torch._dynamo

    torch._dynamo.reset()
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10, qk_norm=True))
    model.train(train)  # training mode includes the label-dropout draw
    x, t, y = _inputs(h=8, w=8, num_classes=10)
    # fullgraph=True raises on any graph break (host sync, data-dependent Python branch)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(5)
    got = compiled(x, t, y)
    torch.manual_seed(5)
    torch.testing.assert_close(got, model(x, t, y))

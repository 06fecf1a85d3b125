"""U-ViT: the paper's parameter counts, the long skips' wiring, condition tokens, padding, any resolution."""
from __future__ import annotations

import pytest
import torch

from ditlab.models import create_model, load_pretrained, save_pretrained
from ditlab.models.uvit import UViT

# Bao et al. 2023, "All are Worth Words", Table 2 (layers, width, MLP width, heads, params in millions),
# with the setting each size was trained in (the reference code's configs/*.py): S/2 CIFAR-10 pixels,
# S-Deep/2 MS-COCO latents with CLIP tokens (768 wide, 77 of them), M/4 and L/4 ImageNet 64 pixels (1000 classes
# + the null one), H/2 ImageNet 256 latents (no final conv). Our positions are fixed sin-cos buffers where the
# reference learns a (condition tokens + patches) x width table; both counts round to the table's figure.
PAPER = [
    ("U-ViT-S/2", 13, 512, 2048, 8, 44, dict(in_channels=3, input_size=32, num_classes=0), 1 + 256),
    ("U-ViT-S-Deep/2", 17, 512, 2048, 8, 58, dict(in_channels=4, input_size=32, num_classes=0, context_dim=768),
     1 + 77 + 256),
    ("U-ViT-M/4", 17, 768, 3072, 12, 131, dict(in_channels=3, input_size=64, num_classes=1000), 2 + 256),
    ("U-ViT-L/4", 21, 1024, 4096, 16, 287, dict(in_channels=3, input_size=64, num_classes=1000), 2 + 256),
    ("U-ViT-H/2", 29, 1152, 4608, 16, 501, dict(in_channels=4, input_size=32, num_classes=1000, final_conv=False),
     2 + 256),
]


@pytest.mark.parametrize("name,layers,width,mlp,heads,millions,setting,tokens", PAPER, ids=[p[0] for p in PAPER])
def test_parameter_counts_equal_the_papers_table(name, layers, width, mlp, heads, millions, setting, tokens):
    model = create_model(name, device="meta", learn_sigma=False, **setting)
    blocks = [*model.in_blocks, *([model.mid_block] if model.mid_block is not None else []), *model.out_blocks]
    assert (len(blocks), model.config.hidden_size, blocks[0].mlp.fc1.out_features, model.config.num_heads) == (
        layers, width, mlp, heads)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6) == millions
    assert round((count + tokens * width) / 1e6) == millions  # with the reference's learned position table


def test_parameter_count_closed_form():
    d, depth, p, c, k, ctx = 32, 5, 2, 4, 10, 0
    model = create_model("U-ViT-Test/2", depth=depth, input_size=8, num_classes=k, learn_sigma=True)
    lin = lambda i, o: i * o + o  # noqa: E731
    block = 3 * d * d + lin(d, d) + lin(d, 4 * d) + lin(4 * d, d) + 2 * 2 * d  # no qkv bias, affine norms
    expected = (c * p * p * d + d + (k + 1) * d + ctx + depth * block + (depth // 2) * lin(2 * d, d)
                + 2 * d + lin(d, p * p * 2 * c) + (2 * c) * (2 * c) * 9 + 2 * c)  # norm, decoder, 3x3 conv
    assert sum(q.numel() for q in model.parameters()) == expected
    assert len(model.in_blocks) == len(model.out_blocks) == 2 and model.mid_block is not None
    even = create_model("U-ViT-Test/2", depth=4, input_size=8)
    assert len(even.in_blocks) == len(even.out_blocks) == 2 and even.mid_block is None


def test_long_skips_pair_block_i_with_block_n_minus_1_minus_i(randomize):
    """Second-half block j fuses [x, output of first-half block n-1-j] (U-Net order), through its skip linear."""
    model = randomize(create_model("U-ViT-Test/2", depth=7, input_size=8, num_classes=10), std=0.1).eval()
    outs, fused = [], []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.in_blocks]
    hooks += [b.skip_linear.register_forward_hook(lambda m, i, o: fused.append(i[0])) for b in model.out_blocks]
    x = torch.randn(2, 4, 8, 8)
    model(x, torch.tensor([1.0, 500.0]), torch.tensor([3, 10]))
    for h in hooks:
        h.remove()
    n, d = len(model.in_blocks), model.config.hidden_size
    for j, cat in enumerate(fused):
        torch.testing.assert_close(cat[..., d:], outs[n - 1 - j], rtol=0, atol=0)


def test_condition_tokens_time_label_and_text(randomize):
    from ditlab.models.layers import timestep_embedding

    model = randomize(create_model("U-ViT-Test/2", input_size=8, num_classes=10)).eval()
    t, y = torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    tokens, mask = model.condition_tokens(t, y)
    assert tokens.shape == (2, 2, 32) and mask is None
    torch.testing.assert_close(tokens[:, 0], timestep_embedding(t, 32))  # the time token is t's sinusoid itself
    torch.testing.assert_close(tokens[:, 1], model.y_embedder(y))
    torch.testing.assert_close(model(torch.randn(2, 4, 8, 8).fill_(0.1), t), model(torch.full((2, 4, 8, 8), 0.1), t,
                                                                                    torch.tensor([10, 10])))
    assert not any("t_embedder" in n for n, _ in model.named_parameters())  # no time MLP (as the paper's)


def test_text_padding_changes_nothing(randomize):
    model = randomize(create_model("U-ViT-Test/2", input_size=8, num_classes=0, context_dim=12, pooled_dim=6),
                      std=0.2).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5.0, 600.0])
    ctx, pooled = torch.randn(2, 5, 12, generator=g), torch.randn(2, 6, generator=g)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    out = model(x, t, context=ctx, context_mask=mask, pooled=pooled)
    torch.testing.assert_close(out[:1], model(x[:1], t[:1], context=ctx[:1, :2], pooled=pooled[:1]),
                               rtol=1e-5, atol=1e-6)
    other = ctx.clone()
    other[0, 2:] = -50.0
    torch.testing.assert_close(model(x, t, context=other, context_mask=mask, pooled=pooled), out)
    assert not torch.allclose(out, model(x, t, context=ctx, context_mask=mask, pooled=pooled + 1))


@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_trains_at_any_resolution(pos):
    torch.manual_seed(0)
    model = create_model("U-ViT-Test/2", input_size=8, num_classes=10, pos_embed=pos)
    x, t, y = torch.randn(4, 4, 6, 10), torch.rand(4) * 999, torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randn(4, 8, 6, 10)
    for _ in range(2):
        opt.zero_grad()
        (model(x, t, y) - target).pow(2).mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not dead, dead
    assert model(x, t, y).shape == (4, 8, 6, 10)


def test_save_load_and_checkpointing(tmp_path, randomize):
    model = randomize(create_model("U-ViT-Test/2", input_size=8, num_classes=10)).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 4])
    save_pretrained(model, tmp_path / "u")
    back = load_pretrained(tmp_path / "u")
    assert isinstance(back, UViT)
    torch.testing.assert_close(back(x, t, y), model(x, t, y), rtol=0, atol=0)
    model.train()
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x, t, y), back(x, t, y), rtol=0, atol=0)

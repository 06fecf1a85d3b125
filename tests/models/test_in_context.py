"""In-context conditioning with text: [t token, projected text] ride along with the image tokens, padding
masked as keys; in ``adaLN-Zero-in-context`` the blocks are adaLN-Zero's, t and the pooled vector in c."""
from __future__ import annotations

import pytest
import torch

from ditlab.models import create_model

KINDS = ["in-context", "adaLN-Zero-in-context"]
MASK = torch.tensor([[True, True, True, False], [True, True, True, True], [False, False, False, False]])


def _model(block, randomize, **kw):
    return randomize(create_model("DiT-Test/2", input_size=8, num_classes=0, context_dim=12, pooled_dim=6,
                                  block=block, **kw), std=0.2).eval()


def _inputs(n=3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.tensor([3.0, 400.0, 999.0])[:n],
            torch.randn(n, 4, 12, generator=g), torch.randn(n, 6, generator=g))


@pytest.mark.parametrize("block", KINDS)
def test_condition_tokens_lead_the_sequence(block, randomize):
    model = _model(block, randomize)
    x, t, ctx, pooled = _inputs()
    c, tokens, mask = model.embed_condition(t, None, ctx, MASK, pooled)
    assert tokens.shape == (3, 5, 32) and mask.shape == (3, 5)
    torch.testing.assert_close(tokens[:, 0], c)  # the time (+ pooled) token first
    torch.testing.assert_close(tokens[:, 1:], model.context_embedder(ctx))
    assert mask[:, 0].all() and torch.equal(mask[:, 1:], MASK)


@pytest.mark.parametrize("block", KINDS)
def test_padding_changes_nothing_and_an_empty_prompt_is_finite(block, randomize):
    model = _model(block, randomize)
    x, t, ctx, pooled = _inputs()
    out = model(x, t, context=ctx, context_mask=MASK, pooled=pooled)
    assert torch.isfinite(out).all()  # row 3: no valid text token, the time token still is one
    torch.testing.assert_close(out[:1], model(x[:1], t[:1], context=ctx[:1, :3], pooled=pooled[:1]),
                               rtol=1e-4, atol=1e-5)  # masked vs shorter attention: fp32 rounding
    other = ctx.clone()
    other[0, 3], other[2] = 77.0, -5.0
    torch.testing.assert_close(model(x, t, context=other, context_mask=MASK, pooled=pooled), out)
    # the text matters where it is real
    assert not torch.allclose(out[1], model(x, t, context=ctx.flip(1), context_mask=MASK, pooled=pooled)[1])


def test_in_context_is_self_attention_over_the_joint_sequence(randomize):
    """One in-context block in closed form: the ViT block applied to [t; text; image] with padding masked."""
    model = _model("in-context", randomize, depth=1)
    x, t, ctx, pooled = _inputs(n=2)
    blk = model.blocks[0]
    c, tokens, mask = model.embed_condition(t, None, ctx, MASK[:2], pooled)
    seq = torch.cat([tokens, model.x_embedder(x) + model.pos_embed], dim=1)  # (N, 5 + 16, D)
    keys = torch.cat([mask, torch.ones(2, 16, dtype=torch.bool)], dim=1)
    h = seq + blk.attn(blk.norm1(seq), None, keys)
    h = h + blk.mlp(blk.norm2(h))
    expected = model.unpatchify(model.final_layer(h[:, 5:], c), 4, 4)
    torch.testing.assert_close(model(x, t, context=ctx, context_mask=MASK[:2], pooled=pooled), expected)


def test_adaln_zero_in_context_starts_at_zero_and_learns_from_text():
    torch.manual_seed(0)
    model = create_model("DiT-Test/2", input_size=8, num_classes=0, context_dim=12, block="adaLN-Zero-in-context")
    x, t, ctx, _ = _inputs()
    assert torch.count_nonzero(model(x, t, context=ctx, context_mask=MASK)) == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    target = torch.randn(3, 8, 8, 8)
    for _ in range(4):
        opt.zero_grad()
        (model(x, t, context=ctx, context_mask=MASK) - target).pow(2).mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, dead
    assert model.context_embedder.linear_1.weight.grad.abs().sum() > 0  # the text tokens are read


@pytest.mark.parametrize("block", KINDS)
def test_class_labels_and_rope(block, randomize):
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10, block=block, pos_embed="rope")).eval()
    x, t = torch.randn(2, 4, 6, 10), torch.tensor([1.0, 2.0])
    out = model(x, t, torch.tensor([1, 2]))
    assert out.shape == (2, 8, 6, 10) and not torch.allclose(out, model(x, t, torch.tensor([3, 4])))

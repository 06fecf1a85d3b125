"""PixArt-α's block: masked cross-attention against a closed form, adaLN-single, init, text-model options."""
from __future__ import annotations

import math

import pytest
import torch

from ditlab.errors import ModelError
from ditlab.models import create_model
from ditlab.models.blocks import BLOCK_KINDS
from ditlab.models.layers import Attention
from ditlab.models.pixart import PixArtBlock

TEXT_BLOCKS = [b for b, kind in BLOCK_KINDS.items() if kind.requires_text]


def _text(n=3, length=6, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(n, length, dim, generator=g)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        mask[i, : 1 + (2 * i) % length] = True  # rows of 1, 3, 5 ... real tokens, then padding
    return context, mask, torch.randn(n, dim, generator=g)


def _text_model(block="pixart", **kw):
    return create_model("DiT-Test/2", input_size=8, num_classes=0, context_dim=12, pooled_dim=12, block=block, **kw)


def test_masked_cross_attention_matches_the_closed_form(randomize):
    """softmax(q k^T / sqrt(d) over the real keys only) v, per head, then the output projection."""
    torch.manual_seed(0)
    attn = randomize(Attention(8, num_heads=2), std=0.3)
    x = torch.randn(2, 5, 8)  # (N, T, D) image tokens
    ctx = torch.randn(2, 4, 8)  # (N, L, D) text tokens
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    out = attn(x, ctx, mask)
    w, b = attn.qkv.weight, attn.qkv.bias
    q, k, v = x @ w[:8].T + b[:8], ctx @ w[8:16].T + b[8:16], ctx @ w[16:].T + b[16:]
    expected = torch.zeros(2, 5, 8)
    for n in range(2):
        keep = mask[n]
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            scores = q[n, :, sl] @ k[n, keep, sl].T / math.sqrt(4)  # (T, L_real)
            expected[n, :, sl] = torch.softmax(scores, dim=-1) @ v[n, keep, sl]
    expected = expected @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # padded keys do not matter, whatever they hold
    torch.testing.assert_close(attn(x, ctx.masked_fill(~mask[..., None], 1e3), mask), out, rtol=1e-5, atol=1e-6)


def test_adaln_single_block_against_its_equations(randomize):
    torch.manual_seed(0)
    d = 8
    blk = randomize(PixArtBlock(d, 2, 2.0, qk_norm=False), std=0.2)
    x, ctx = torch.randn(2, 4, d), torch.randn(2, 3, d)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t0 = torch.randn(2, 6 * d)  # the shared modulation of the backbone
    sh1, sc1, g1, sh2, sc2, g2 = (blk.scale_shift_table[None] + t0.view(2, 6, d)).unbind(1)
    ln = torch.nn.functional.layer_norm
    h = x + g1[:, None] * blk.attn(ln(x, (d,), eps=1e-6) * (1 + sc1[:, None]) + sh1[:, None])
    h = h + blk.cross_attn(h, ctx, mask)
    h = h + g2[:, None] * blk.mlp(ln(h, (d,), eps=1e-6) * (1 + sc2[:, None]) + sh2[:, None])
    torch.testing.assert_close(blk(x, t0, ctx, mask), h)


def test_fresh_pixart_model_predicts_zeros_ignores_text_and_trains():
    torch.manual_seed(0)
    model = _text_model()
    assert model.t_block is not None and model.final_layer.table
    assert all(torch.count_nonzero(b.cross_attn.proj.weight) == 0 for b in model.blocks)  # the text path starts shut
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3) * 999
    context, mask, pooled = _text()
    assert torch.count_nonzero(model(x, t, context=context, context_mask=mask, pooled=pooled)) == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    target = torch.randn(3, 8, 8, 8)
    for _ in range(3):
        opt.zero_grad()
        (model(x, t, context=context, context_mask=mask, pooled=pooled) - target).pow(2).mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, dead
    model.eval()
    out = model(x, t, context=context, context_mask=mask, pooled=pooled)
    assert not torch.allclose(out, model(x, t, context=context.flip(0), context_mask=mask.flip(0), pooled=pooled))
    assert not torch.allclose(out, model(x, t, context=context, context_mask=mask, pooled=pooled.flip(0)))


@pytest.mark.parametrize("block", TEXT_BLOCKS + ["cross-attention", "in-context", "adaLN-Zero"])
def test_text_models_ignore_padding(block, randomize):
    """Padded text positions change nothing (masked keys; their features are whatever the table holds)."""
    model = randomize(_text_model(block)).eval()
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3) * 999
    context, mask, pooled = _text()
    out = model(x, t, context=context, context_mask=mask, pooled=pooled)
    noisy = context.masked_fill(~mask[..., None], 7.0)
    torch.testing.assert_close(model(x, t, context=noisy, context_mask=mask, pooled=pooled), out, rtol=1e-4, atol=1e-5)


def test_pooled_only_models_have_no_token_embedder():
    """adaLN-Zero reads no tokens: a text model of that kind uses the pooled vector alone."""
    model = _text_model("adaLN-Zero")
    assert model.context_embedder is None and model.pooled_embedder is not None and model.t_block is None


def test_learned_null_token_replaces_rows_without_tokens(randomize):
    model = randomize(_text_model(learned_null=True)).eval()
    assert model.null_token is not None
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2) * 999
    context, mask, pooled = _text(n=2)
    empty = torch.zeros_like(mask)
    out = model(x, t, context=context, context_mask=empty, pooled=torch.zeros_like(pooled))
    assert torch.isfinite(out).all()
    # a row without tokens is the same whatever its (ignored) features
    torch.testing.assert_close(out, model(x, t, context=-context, context_mask=empty, pooled=torch.zeros_like(pooled)))
    with torch.no_grad():
        model.null_token.add_(1.0)
    assert not torch.allclose(out, model(x, t, context=context, context_mask=empty, pooled=torch.zeros_like(pooled)))


def test_text_block_needs_text_and_sizes_come_from_the_registry():
    with pytest.raises(ModelError, match="cross-attends to text tokens"):
        create_model("DiT-Test/2", input_size=8, num_classes=10, block="pixart")
    model = create_model("DiT-XL/2", device="meta", num_classes=0, context_dim=4096, pooled_dim=0, block="pixart")
    n_params = sum(p.numel() for p in model.parameters())
    # PixArt-α (DiT-XL/2 geometry, 4096-d T5-XXL tokens, learned sigma) has 611M parameters (paper, §2.3):
    # no per-block adaLN regression (adaLN-single), plus cross-attention in every block
    assert round(n_params / 1e6) == 611
    d = 1152
    per_block = 2 * (3 * d * d + 3 * d + d * d + d) + (8 * d * d + 5 * d) + 6 * d
    rest = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("blocks"))
    assert n_params - 28 * per_block == rest


def test_gradient_checkpointing_same_numbers(randomize):
    model = randomize(_text_model())
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3) * 999
    context, mask, pooled = _text()

    def run():
        model.zero_grad()
        out = model(x, t, context=context, context_mask=mask, pooled=pooled)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    out0, g0 = run()
    model.set_grad_checkpointing(True)
    out1, g1 = run()
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0, msg=n)


@pytest.mark.slow
def test_text_model_compiles_as_one_graph(randomize):
    """fullgraph=True raises on any graph break (the learned-null swap and masks must stay tensor ops)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = randomize(_text_model(learned_null=True))
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3) * 999
    context, mask, pooled = _text()
    mask[2] = False  # one null row
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = compiled(x, t, context=context, context_mask=mask, pooled=pooled)
    torch.testing.assert_close(got, model(x, t, context=context, context_mask=mask, pooled=pooled))
    got.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

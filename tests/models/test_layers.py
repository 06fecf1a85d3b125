"""Positions, timestep sinusoids, attention, qk-norm: against closed forms and diffusers."""
from __future__ import annotations

import math

import pytest
import torch

from ditlab.models.blocks import CrossAttentionBlock
from ditlab.models.layers import Attention, RMSNorm, sincos_1d, sincos_2d, timestep_embedding


def test_sincos_2d_closed_form_non_square():
    dim, gh, gw = 16, 3, 5
    emb = sincos_2d(dim, gh, gw)
    assert emb.shape == (gh * gw, dim) and emb.dtype == torch.float32
    q = dim // 4  # frequencies per (axis, sin|cos) quarter
    for r in range(gh):
        for c in range(gw):
            row = emb[r * gw + c]  # row-major token order
            for i in range(q):
                omega = 10000 ** (-i / q)
                # first half embeds the column index, second half the row index; each [sin | cos]
                assert row[i].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
                assert row[q + i].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
                assert row[2 * q + i].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
                assert row[3 * q + i].item() == pytest.approx(math.cos(r * omega), abs=1e-6)


def test_sincos_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ours = sincos_2d(64, 6, 6)
    theirs = torch.as_tensor(get_2d_sincos_pos_embed(64, 6, base_size=6, output_type="pt")).float()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_sincos_rejects_bad_dims():
    with pytest.raises(ValueError):
        sincos_1d(7, torch.arange(3))
    with pytest.raises(ValueError):
        sincos_2d(18, 2, 2)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_timestep_embedding_closed_form(shift):
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    emb = timestep_embedding(t, 8, freq_shift=shift)
    for n, tv in enumerate(t.tolist()):
        for i in range(4):
            f = math.exp(-math.log(10000) * i / (4 - shift))
            assert emb[n, i].item() == pytest.approx(math.cos(tv * f), abs=2e-4)
            assert emb[n, 4 + i].item() == pytest.approx(math.sin(tv * f), abs=2e-4)


def test_timestep_embedding_matches_diffusers_variant():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.linspace(0, 999, 13)
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
    torch.testing.assert_close(timestep_embedding(t, 256, freq_shift=1.0), theirs)


def _manual_attention(x, ctx, w, b, proj_w, proj_b, heads, mask=None, qnorm=None, knorm=None):
    d = x.shape[-1]
    q = x @ w[:d].T + b[:d]
    k = ctx @ w[d:2 * d].T + b[d:2 * d]
    v = ctx @ w[2 * d:].T + b[2 * d:]
    hd = d // heads
    split = lambda z: z.view(z.shape[0], z.shape[1], heads, hd).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    if qnorm is not None:
        q, k = qnorm(q), knorm(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (N, H, T, L)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return out.transpose(1, 2).reshape(x.shape) @ proj_w.T + proj_b


@pytest.mark.parametrize("grad", [True, False], ids=["training-one-qkv-gemm", "sampling-three-gemms"])
@pytest.mark.parametrize("qk_norm,bias", [(False, True), (True, True), (False, False)])
def test_self_attention_closed_form(qk_norm, bias, grad):
    torch.manual_seed(0)
    attn = Attention(32, 4, qk_norm=qk_norm, qkv_bias=bias)
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 32)
    qkv_bias = attn.qkv.bias if bias else torch.zeros(96)
    ref = _manual_attention(x, x, attn.qkv.weight, qkv_bias, attn.proj.weight, attn.proj.bias, 4,
                            qnorm=attn.q_norm if qk_norm else None, knorm=attn.k_norm if qk_norm else None)
    with torch.set_grad_enabled(grad):  # the two paths of the self-attention projection
        torch.testing.assert_close(attn(x), ref.detach(), atol=1e-5, rtol=1e-5)


def test_cross_attention_with_padding_mask():
    torch.manual_seed(1)
    attn = Attention(32, 2)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = attn(x, ctx, mask)
    ref = _manual_attention(x, ctx, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, 2, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # padded tokens have no influence at all
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 1e3 * torch.randn(3, 32)
    torch.testing.assert_close(attn(x, ctx2, mask)[0], out[0])
    # and sample 0 equals attending to its 3 valid tokens only
    torch.testing.assert_close(attn(x[:1], ctx[:1, :3]), out[:1], atol=1e-5, rtol=1e-5)


def test_cross_attention_block_takes_any_token_sequence():
    torch.manual_seed(2)
    blk = CrossAttentionBlock(32, 2, 4.0, qk_norm=True)
    x, text = torch.randn(3, 9, 32), torch.randn(3, 11, 32)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 4:] = False
    out = blk(x, torch.zeros(3, 32), text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(blk(x[1:2], None, text[1:2, :4]), out[1:2], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        blk(x, torch.zeros(3, 32))


def test_rmsnorm_closed_form():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(4, 8)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 9.0)
    torch.testing.assert_close(norm(x), ref)
    if hasattr(torch.nn, "RMSNorm"):
        theirs = torch.nn.RMSNorm(8, eps=1e-6)
        with torch.no_grad():
            theirs.weight.copy_(norm.weight)
        torch.testing.assert_close(norm(x), theirs(x))

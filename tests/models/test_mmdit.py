"""MMDiT (SD3): joint attention in closed form, padding, the pre-only block, SD3-medium's parameter count."""
from __future__ import annotations

import math

import pytest
import torch

from ditlab.errors import ModelError
from ditlab.models import create_model, load_pretrained, model_from_config, save_pretrained
from ditlab.models.layers import Attention
from ditlab.models.mmdit import MMDiT, joint_attention

MASK = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])


def _tiny(**kw) -> MMDiT:
    return create_model("MMDiT-Test/2", input_size=8, context_dim=12, pooled_dim=6, **kw)


def _inputs(n=2, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, h, w, generator=g), torch.rand(n, generator=g), torch.randn(n, 5, 12, generator=g),
            torch.randn(n, 6, generator=g))


def _randomized_attention(seed: int, qk_norm: bool = True) -> Attention:
    g = torch.Generator().manual_seed(seed)
    attn = Attention(16, 2, qk_norm=qk_norm)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return attn


def test_joint_attention_with_equal_weights_is_self_attention_over_the_concatenation():
    a = _randomized_attention(0)
    b = _randomized_attention(99)
    b.load_state_dict(a.state_dict())
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    out_x, out_c = joint_attention(a, b, x, ctx, MASK)
    keys = torch.cat([torch.ones(2, 6, dtype=torch.bool), MASK], dim=1)
    ref = a(torch.cat([x, ctx], dim=1), None, keys)  # (N, 11, D): one self-attention, padding masked as keys
    torch.testing.assert_close(out_x, ref[:, :6])
    torch.testing.assert_close(out_c, ref[:, 6:])


def test_joint_attention_equals_the_softmax_formula_with_two_streams():
    """softmax(Q K^T / sqrt(d)) V over [image; text], each token's q, k, v (and RMS q/k norms) from its stream."""
    a, b = _randomized_attention(1), _randomized_attention(2)
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    out_x, out_c = joint_attention(a, b, x, ctx, MASK)

    def qkv(attn: Attention, z: torch.Tensor):
        q, k, v = (z @ w.T + bias for w, bias in zip(attn.qkv.weight.chunk(3), attn.qkv.bias.chunk(3), strict=True))
        split = lambda u: u.reshape(*u.shape[:2], 2, 8).transpose(1, 2)  # noqa: E731  (N, H, T, 8)
        rms = lambda u, g: u / u.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * g  # noqa: E731
        return rms(split(q), attn.q_norm.weight), rms(split(k), attn.k_norm.weight), split(v)

    (qx, kx, vx), (qc, kc, vc) = qkv(a, x), qkv(b, ctx)
    q, k, v = torch.cat([qx, qc], 2), torch.cat([kx, kc], 2), torch.cat([vx, vc], 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)  # (N, H, 11, 11)
    keys = torch.cat([torch.ones(2, 6, dtype=torch.bool), MASK], dim=1)
    scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
    o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 11, 16)
    torch.testing.assert_close(out_x, o[:, :6] @ a.proj.weight.T + a.proj.bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_c, o[:, 6:] @ b.proj.weight.T + b.proj.bias, rtol=1e-5, atol=1e-5)


def test_padding_text_tokens_change_nothing(randomize):
    """A padded prompt with its mask gives what the same prompt without the padding gives."""
    model = randomize(_tiny(qk_norm=True)).eval()
    x, t, ctx, pooled = _inputs()
    out = model(x, t, context=ctx, context_mask=MASK, pooled=pooled)
    alone = model(x[:1], t[:1], context=ctx[:1, :3], pooled=pooled[:1])
    torch.testing.assert_close(out[:1], alone, rtol=1e-5, atol=1e-6)
    other = ctx.clone()
    other[0, 3:] = 100.0  # what the padding holds does not matter
    torch.testing.assert_close(model(x, t, context=other, context_mask=MASK, pooled=pooled), out)
    torch.testing.assert_close(out[1:], model(x[1:], t[1:], context=ctx[1:], pooled=pooled[1:]), rtol=1e-5, atol=1e-6)


def test_fresh_model_predicts_zero_and_every_parameter_learns():
    torch.manual_seed(0)
    model = _tiny(qk_norm=True)
    x, t, ctx, pooled = _inputs()
    assert torch.count_nonzero(model(x, t, context=ctx, context_mask=MASK, pooled=pooled)) == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(5):  # the zero-init chain reaches block 0's text stream through block 1's gates
        opt.zero_grad()
        (model(x, t, context=ctx, context_mask=MASK, pooled=pooled) - target).pow(2).mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    # the last block's text queries feed outputs nothing reads (as in SD3): only their norm gain is idle
    assert dead == ["blocks.1.context_attn.q_norm.weight"], dead
    assert not torch.allclose(model(x, t, context=ctx, pooled=pooled), model(x, t + 0.3, context=ctx, pooled=pooled))


def test_pre_only_last_block_and_parameter_count_closed_form():
    d, c, k, pd, depth = 32, 4, 12, 6, 2
    model = _tiny(qk_norm=True)
    last = model.blocks[-1]
    assert last.pre_only and not model.blocks[0].pre_only
    assert not hasattr(last, "context_mlp") and last.context_adaLN_modulation[-1].out_features == 2 * d
    lin = lambda i, o: i * o + o  # noqa: E731
    attn = lin(d, 3 * d) + lin(d, d) + 2 * (d // 2)  # fused qkv, output projection, q/k RMS gains
    stream = attn + lin(d, 4 * d) + lin(4 * d, d) + lin(d, 6 * d)
    pre_only_text = attn - lin(d, d) + lin(d, 2 * d)
    expected = (c * 4 * d + d + lin(256, d) + lin(d, d) + lin(pd, d) + lin(d, d) + lin(k, d)
                + depth * stream + (depth - 1) * stream + pre_only_text + lin(d, 2 * d) + lin(d, 4 * c))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert "pos_embed" not in model.state_dict()  # fixed positions are a buffer, recomputed, never stored


def test_sd3_medium_has_the_parameters_of_diffusers_sd3():
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):  # stabilityai/stable-diffusion-3-medium's transformer/config.json
        ref = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                    attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                    caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                    pos_embed_max_size=192)
    model = create_model("SD3-medium", device="meta")
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == 2_028_328_000
    out = model(torch.empty(1, 16, 128, 96, device="meta"), torch.empty(1, device="meta"),
                context=torch.empty(1, 333, 4096, device="meta"), pooled=torch.empty(1, 2048, device="meta"))
    assert out.shape == (1, 16, 128, 96)


def test_any_resolution_and_rope(randomize):
    model = randomize(_tiny()).eval()
    x, t, ctx, pooled = _inputs(h=6, w=12)
    assert model(x, t, context=ctx, pooled=pooled).shape == (2, 4, 6, 12)
    rope = randomize(_tiny(pos_embed="rope")).eval()
    out = rope(x, t, context=ctx, context_mask=MASK, pooled=pooled)
    assert out.shape == (2, 4, 6, 12) and torch.isfinite(out).all()


def test_save_load_and_rebuild_from_config(tmp_path, randomize):
    model = randomize(_tiny(qk_norm=True)).eval()
    x, t, ctx, pooled = _inputs()
    save_pretrained(model, tmp_path / "m")
    back = load_pretrained(tmp_path / "m")
    assert isinstance(back, MMDiT) and isinstance(model_from_config(model.config.to_dict()), MMDiT)
    torch.testing.assert_close(back(x, t, context=ctx, context_mask=MASK, pooled=pooled),
                               model(x, t, context=ctx, context_mask=MASK, pooled=pooled), rtol=0, atol=0)


def test_gradient_checkpointing_same_numbers(randomize):
    model = randomize(_tiny())
    x, t, ctx, pooled = _inputs()

    def run():
        model.zero_grad()
        out = model(x, t, context=ctx, context_mask=MASK, pooled=pooled)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out0, g0 = run()
    model.set_grad_checkpointing(True)
    out1, g1 = run()
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("overrides,message", [
    (dict(num_classes=10, context_dim=0), "cross-attends to text tokens"),
    (dict(context_dim=0), "cross-attends to text tokens"),
    (dict(qkv_bias=False), "is not an option of block 'mmdit'"),
])
def test_impossible_mmdit_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ModelError, match=message) as err:
        create_model("MMDiT-Test/2", input_size=8, **overrides)
    assert "\n" not in str(err.value)

"""The space-time DiT: positions, both layouts against closed-form attention, joint training, image init."""
from __future__ import annotations

import math

import pytest
import torch

from ditlab.errors import ModelError
from ditlab.models import DiT, VideoDiT, create_model, load_pretrained, model_from_config, save_pretrained
from ditlab.models.layers import apply_rope, modulate, sincos_1d, sincos_2d
from ditlab.models.video import rope_3d, sincos_time, video_from_image


def tiny(**kw) -> VideoDiT:
    base = dict(input_size=4, in_channels=2, num_classes=5, learn_sigma=False, depth=2, hidden_size=24,
                num_heads=2, patch_size=2, num_frames=4)
    return create_model("DiT-Test/2", **{**base, **kw})


def inputs(n=2, f=4, side=4, c=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, f, side, side, generator=g), torch.rand(n, generator=g) * 1000,
            torch.randint(0, 5, (n,), generator=g))


# ----------------------------------------------------------------------------- positions
def test_time_positions_are_1d_sincos_and_space_is_the_image_grid():
    assert torch.equal(sincos_time(24, 5), sincos_1d(24, torch.arange(5)).float())
    emb = sincos_time(8, 3)
    assert torch.allclose(emb[1, :4], torch.sin(torch.tensor(1.0) / 10000 ** (torch.arange(4) / 4.0)))
    model = tiny()
    assert torch.equal(model.pos_embed[0], sincos_2d(24, 2, 2))  # every frame: the image model's positions


def test_rope_3d_angles_per_axis_and_relative_dot_products():
    head = 12  # 6 frequencies: 2 for rows, 2 for columns, 2 for time
    cos, sin = rope_3d(head, 3, 2, 4)
    assert cos.shape == sin.shape == (3 * 2 * 4, 6)
    angles = torch.atan2(sin, cos).double()
    tok = lambda t, i, j: (t * 2 + i) * 4 + j  # noqa: E731  (frame-major, then row-major)
    # time slots move with t only, row slots with i only, column slots with j only
    assert torch.allclose(angles[tok(1, 0, 0), :2], torch.tensor([1.0, 10000 ** -0.5], dtype=torch.float64))
    assert torch.allclose(angles[tok(2, 1, 3), 2:4], angles[tok(0, 1, 0), 2:4])
    assert torch.allclose(angles[tok(2, 1, 3), 4:], torch.tensor([3.0, 3 * 10000 ** -0.5], dtype=torch.float64))
    # rotation keeps norms, and q.k depends only on the positions' difference
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head, generator=g), torch.randn(head, generator=g)

    def dot(a: int, b: int) -> float:
        rq = apply_rope(q[None], (cos[a : a + 1], sin[a : a + 1]))[0]
        rk = apply_rope(k[None], (cos[b : b + 1], sin[b : b + 1]))[0]
        assert math.isclose(rq.norm().item(), q.norm().item(), rel_tol=1e-5)
        return float(rq @ rk)

    assert math.isclose(dot(tok(0, 0, 0), tok(1, 1, 2)), dot(tok(1, 0, 1), tok(2, 1, 3)), abs_tol=1e-5)
    assert math.isclose(dot(tok(0, 1, 0), tok(2, 0, 1)), dot(tok(0, 1, 2), tok(2, 0, 3)), abs_tol=1e-5)
    assert not math.isclose(dot(tok(0, 0, 0), tok(1, 1, 2)), dot(tok(0, 0, 0), tok(2, 1, 2)), abs_tol=1e-3)


# ----------------------------------------------------------------------------- layouts vs closed form
def _closed_form_block(block, x, c, allowed, pos=None):
    """An adaLN-Zero block written out in float64: attention as softmax(q k^T / sqrt(d) + mask) v over ALL
    tokens (N, L, D) of a clip, keeping only the pairs ``allowed`` (L, L) bool."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=1)
    h = modulate(block.norm1(x), shift1, scale1)
    if pos is not None:
        h = h + pos
    attn = block.attn
    n, length, d = h.shape
    heads = attn.num_heads
    q, k, v = (h @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)  # (N, H, L, L)
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)
    x = x + gate1[:, None] * attn.proj(out)
    return x + gate2[:, None] * block.mlp(modulate(block.norm2(x), shift2, scale2))


@pytest.mark.parametrize("where", ["spatial", "temporal", "full"])
def test_layouts_equal_closed_form_masked_attention(where, randomize):
    layout = "full" if where == "full" else "interleaved"
    model = randomize(tiny(layout=layout, num_frames=3)).double()
    n, f, s, d = 2, 3, 4, 24
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, f, s, d, generator=g, dtype=torch.float64)
    c = torch.randn(n, d, generator=g, dtype=torch.float64)
    frame = torch.arange(f).repeat_interleave(s)  # token -> frame, tokens frame-major
    place = torch.arange(s).repeat(f)  # token -> spatial position
    pos = None
    if where == "spatial":
        got = model._spatial(model.blocks[0], x, c, None, None, None)
        allowed = frame[:, None] == frame[None, :]
    elif where == "temporal":
        pos_t = sincos_time(d, f).double()[None]  # (1, F, D)
        got = model._temporal(model.temporal_blocks[0], x, c, pos_t, None)
        allowed = place[:, None] == place[None, :]
        pos = pos_t[0][frame][None]  # each token gets its frame's time position
    else:
        got = model._joint(model.blocks[0], x, c, None, None, None)
        allowed = torch.ones(f * s, f * s, dtype=torch.bool)
    block = model.blocks[0] if where != "temporal" else model.temporal_blocks[0]
    want = _closed_form_block(block, x.reshape(n, f * s, d), c, allowed, pos)
    assert torch.allclose(got.reshape(n, f * s, d), want, atol=1e-10)


def test_temporal_rope_rotates_by_frame_only(randomize):
    model = randomize(tiny(pos_embed="rope", hidden_size=24, num_heads=2)).double()
    x, t, y = inputs()
    out = model(x.double(), t.double(), y=y)
    assert out.shape == (2, 2, 4, 4, 4) and torch.isfinite(out).all()
    cos, sin = rope_3d(12, 4, 2, 2)
    assert torch.allclose(cos[::4, 2:], torch.ones(4, 4))  # spatial position 0: only time rotates


# ----------------------------------------------------------------------------- every variant
VARIANTS = [dict(layout=lay, pos_embed=pe, temporal_patch_size=pt) for lay in ("interleaved", "full")
            for pe in ("sincos", "rope") for pt in (1, 2)]


def _variant_id(v: dict) -> str:
    return f"{v['layout']}-{v['pos_embed']}-pt{v['temporal_patch_size']}"


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_every_variant_runs_learns_and_round_trips(variant, tmp_path, randomize):
    model = randomize(tiny(learn_sigma=True, **variant))
    x, t, y = inputs()
    out = model(x, t, y=y)
    assert out.shape == (2, 4, 4, 4, 4) and torch.isfinite(out).all()
    out.square().mean().backward()
    silent = [k for k, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not silent
    model.set_grad_checkpointing(True)
    assert torch.allclose(model(x, t, y=y), out, atol=1e-6)
    model.set_grad_checkpointing(False)
    again = model_from_config(model.config.to_dict())
    assert isinstance(again, VideoDiT) and again.config == model.config
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert torch.equal(loaded(x, t, y=y), model.eval()(x, t, y=y))


def test_image_models_keep_their_config_keys():
    d = create_model("DiT-Test/2", input_size=4).config.to_dict()
    assert "num_frames" not in d and "layout" not in d
    assert type(model_from_config(d)) is DiT


# ----------------------------------------------------------------------------- images, joint training, image init
def test_one_frame_is_an_image_and_skips_temporal_blocks(randomize):
    model = randomize(tiny())
    x, t, y = inputs(f=1)
    out = model(x, t, y=y)
    image = DiT(model.config)  # the same weights minus the temporal blocks
    image.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("temporal_blocks.")})
    assert torch.equal(out[:, :, 0], image(x[:, :, 0], t, y=y))


def test_joint_batch_images_see_only_themselves(randomize):
    model = randomize(tiny(num_frames=3))
    x, t, y = inputs(f=5)  # 3 video frames + 2 images per sample
    out = model(x, t, y=y, num_images=2)
    for i in (3, 4):  # each image frame equals that frame alone, as a 1-frame input
        alone = model(x[:, :, i : i + 1], t, y=y)[:, :, 0]
        assert torch.allclose(out[:, :, i], alone, atol=1e-6)
    clip = model(x[:, :, :3], t, y=y)
    assert torch.allclose(out[:, :, :3], clip, atol=1e-6)  # the clip does not see the images
    changed = x.clone()
    changed[:, :, 3:] += 1.0
    assert torch.allclose(model(changed, t, y=y, num_images=2)[:, :, :3], out[:, :, :3], atol=1e-6)


def test_joint_training_lowers_the_loss_of_both_parts():
    torch.manual_seed(0)
    model = tiny(num_frames=3, learn_sigma=False)
    x, t, y = inputs(n=8, f=5, seed=3)  # 3 video frames + 2 images per sample, a fixed noisy input
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        err = (model(x, t, y=y, num_images=2) - target).square()
        return err[:, :, :3].mean(), err[:, :, 3:].mean()  # the clip's frames, the images

    first = [v.item() for v in losses()]
    for _ in range(40):
        loss = sum(losses())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.temporal_blocks[0].adaLN_modulation[-1].weight.abs().sum() > 0  # the temporal blocks train too
    last = [v.item() for v in losses()]
    assert last[0] < 0.7 * first[0] and last[1] < 0.7 * first[1]


@pytest.mark.parametrize("layout", ["interleaved", "full"])
def test_video_from_image_reproduces_the_image_model_frame_by_frame(layout, randomize):
    image = randomize(create_model("DiT-Test/2", input_size=4, in_channels=2, num_classes=5, learn_sigma=True,
                                    hidden_size=24, num_heads=2)).double()
    video = video_from_image(image, 4, layout=layout).double()
    x, t, y = (v.double() if v.is_floating_point() else v for v in inputs())
    frames = x.transpose(1, 2).reshape(8, 2, 4, 4)
    per_frame = image(frames, t.repeat_interleave(4), y=y.repeat_interleave(4)).reshape(2, 4, 4, 4, 4)
    out = video(x, t, y=y)
    if layout == "interleaved":
        # the zero-gated temporal blocks are exactly the identity: the same bits as skipping them
        assert torch.equal(out, video(x, t, y=y, num_images=4))
        # and the spatial path is the image model's, to the rounding of a different batch arrangement
        assert (out - per_frame.transpose(1, 2)).abs().max() < 1e-12
        assert torch.equal(video(x[:, :, :1], t, y=y)[:, :, 0], image(x[:, :, 0], t, y=y))  # one frame: exactly
    else:  # full attention mixes frames from the first step: the weights load, the identity does not hold
        assert (out - per_frame.transpose(1, 2)).abs().max() > 1e-3


def test_video_from_image_refuses_another_geometry():
    image = create_model("DiT-Test/2", input_size=4, in_channels=2, num_classes=5)
    video = tiny(num_classes=7, learn_sigma=True)
    from ditlab.models.video import load_image_weights

    with pytest.raises(ModelError, match="does not fit"):
        load_image_weights(video, image.state_dict())


def test_tubelet_init_from_image_embeds_a_static_clip_as_its_image(randomize):
    image = randomize(create_model("DiT-Test/2", input_size=4, in_channels=2, num_classes=5, learn_sigma=False,
                                    hidden_size=24, num_heads=2))
    video = video_from_image(image, 4, temporal_patch_size=2)
    x, _, _ = inputs(f=1)
    static = x.repeat(1, 1, 2, 1, 1)  # (N, C, 2, H, W): one frame twice
    assert torch.allclose(video.x_embedder(static)[:, 0], image.x_embedder(x[:, :, 0]), atol=1e-6)


# ----------------------------------------------------------------------------- bad geometry
def test_bad_video_geometry_is_one_line():
    with pytest.raises(ModelError, match="not divisible by the temporal patch size 3"):
        tiny(num_frames=4, temporal_patch_size=3)
    with pytest.raises(ModelError, match="unknown video layout"):
        tiny(layout="divided")
    with pytest.raises(ModelError, match="set num_frames > 0"):
        create_model("DiT-Test/2", input_size=4, layout="full")
    with pytest.raises(ModelError, match="in-context"):
        tiny(block="in-context")
    model = tiny(temporal_patch_size=2)
    x, t, y = inputs(f=3)
    with pytest.raises(ValueError, match="not divisible by the temporal patch size 2"):
        model(x, t, y=y)
    with pytest.raises(ValueError, match=r"\(N, C, F, H, W\)"):
        model(x[:, :, 0], t, y=y)


def test_grad_checkpointing_n_recomputes_the_first_n_block_pairs(monkeypatch):
    import ditlab.models.video as video_module

    model = tiny(depth=3)
    x, t, y = inputs()
    model(x, t, y=y).square().mean().backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    seen = []
    real = video_module.checkpoint
    monkeypatch.setattr(video_module, "checkpoint", lambda block, *a, **k: seen.append(block) or real(block, *a, **k))
    model.set_grad_checkpointing(1)
    model(x, t, y=y).square().mean().backward()
    assert seen == [model.blocks[0], model.temporal_blocks[0]]
    assert all(torch.allclose(p.grad, want[k], atol=1e-7) for k, p in model.named_parameters() if k in want)

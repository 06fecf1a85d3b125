"""Positions of any grid: the sin-cos rules of DiT, PixArt-α and SD3 (against diffusers), and 2-D RoPE."""
from __future__ import annotations

import math

import pytest
import torch

from ditlab.models import DiTConfig, create_model
from ditlab.models.layers import apply_rope, sincos_2d
from ditlab.models.positions import axis_coords, grid_coords, grid_rope, grid_sincos, rope_2d, rope_pad, sincos_2d_at


def _cfg(**kw) -> DiTConfig:
    return DiTConfig(**{"hidden_size": 32, "num_heads": 2, "input_size": (8, 8), **kw})


def test_default_rule_is_ditS_integer_grid():
    for gh, gw in [(4, 4), (3, 5), (1, 7)]:
        torch.testing.assert_close(grid_sincos(_cfg(), gh, gw), sincos_2d(32, gh, gw), rtol=0, atol=0)
    rows, cols = grid_coords(2, 3)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("grid,base,scale", [((4, 4), 4, 1.0), ((6, 10), 4, 2.0), ((8, 3), 8, 0.5)])
def test_pixart_interpolation_equals_diffusers(grid, base, scale):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(32, grid, base_size=base, interpolation_scale=scale, output_type="pt")
    got = grid_sincos(_cfg(pos_base_size=base, pos_scale=scale), *grid)
    torch.testing.assert_close(got, ref.float(), rtol=0, atol=1e-6)
    # every grid spans the base grid's range: the last coordinate is (n - 1) * base / n / scale
    last = axis_coords(grid[0], base=base, scale=scale)[-1].item()
    assert last == pytest.approx((grid[0] - 1) * base / grid[0] / scale)


@pytest.mark.parametrize("grid", [(6, 6), (4, 10), (12, 2), (12, 12)])
def test_sd3_centre_crop_equals_diffusers(grid):
    from diffusers.models.embeddings import PatchEmbed

    # SD3-like geometry in small: a 12x12 table on a 4-token base (coordinates j / 3), patch 2
    pe = PatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=32, pos_embed_max_size=12)
    ref = pe.cropped_pos_embed(grid[0] * 2, grid[1] * 2)[0]
    got = grid_sincos(_cfg(pos_max_size=12, pos_base_size=4), *grid)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_a_grid_larger_than_the_table_is_refused():
    from ditlab.errors import ModelError

    with pytest.raises(ModelError, match="exceeds the position table"):
        _cfg(input_size=(30, 8), pos_max_size=12)
    with pytest.raises(ValueError, match="exceeds"):
        axis_coords(13, max_size=12)


def test_rope_is_a_rotation_by_the_closed_form_angles():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 6, 8, generator=g)  # (N, H, T, d)
    rows, cols = grid_coords(2, 3)
    rope = rope_2d(8, rows, cols)
    # as complex numbers: channel pair k of token j times exp(i * angle_jk)
    freqs = 10000 ** (-torch.arange(2) / 2)
    angles = torch.cat([cols[:, None] * freqs, rows[:, None] * freqs], dim=1)  # (T, d/2): columns, then rows
    z = torch.view_as_complex(q.reshape(2, 3, 6, 4, 2).contiguous()) * torch.polar(torch.ones_like(angles), angles)
    torch.testing.assert_close(apply_rope(q, rope), torch.view_as_real(z).reshape(q.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.norm(dim=-1), apply_rope(q, rope).norm(dim=-1))  # a rotation


def test_rope_scores_depend_only_on_the_offset():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(a: tuple[float, float], b: tuple[float, float]) -> float:
        ra = rope_2d(16, torch.tensor([a[0]]), torch.tensor([a[1]]))
        rb = rope_2d(16, torch.tensor([b[0]]), torch.tensor([b[1]]))
        return (apply_rope(q, ra) * apply_rope(k, rb)).sum().item()

    assert score((1, 2), (3, 0)) == pytest.approx(score((5, 7), (7, 5)), rel=1e-5)
    assert score((1, 2), (3, 0)) != pytest.approx(score((1, 2), (0, 3)), rel=1e-3)


def test_rope_pad_leaves_condition_tokens_unrotated():
    rope = grid_rope(_cfg(), 2, 2)  # head width 16
    cos, sin = rope_pad(rope, before=3, after=1)
    assert cos.shape == (8, 8) and torch.equal(cos[:3], torch.ones(3, 8)) and torch.equal(sin[-1], torch.zeros(8))
    torch.testing.assert_close(cos[3:7], rope[0])


@pytest.mark.parametrize("block", ["adaLN-Zero", "cross-attention", "in-context", "adaLN-Zero-in-context"])
def test_rope_models_run_at_any_grid_and_see_positions(block, randomize):
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10, block=block, pos_embed="rope"),
                      std=0.3).eval()
    x, t, y = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(0)), torch.tensor([3.0, 500.0]), \
        torch.tensor([1, 2])
    out = model(x, t, y)
    assert out.shape == (2, 8, 6, 10) and torch.isfinite(out).all()
    # positions matter: swapping the content of two patches does not just swap their outputs
    swapped = x.clone()
    swapped[..., 0:2, 0:2], swapped[..., 4:6, 8:10] = x[..., 4:6, 8:10], x[..., 0:2, 0:2]
    got = model(swapped, t, y)
    assert not torch.allclose(got[..., 0:2, 0:2], out[..., 4:6, 8:10], atol=1e-4)


def test_rope_is_relative_sincos_is_absolute(randomize):
    """Shifting every coordinate by a constant (SD3's crop of a larger table) leaves a RoPE model's output
    unchanged and changes a sin-cos model's."""
    x, t, y = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([3.0, 500.0]), \
        torch.tensor([1, 2])
    for pos, same in (("rope", True), ("sincos", False)):
        a = randomize(create_model("DiT-Test/2", input_size=6, num_classes=10, pos_embed=pos), std=0.3).eval()
        b = create_model("DiT-Test/2", input_size=6, num_classes=10, pos_embed=pos, pos_max_size=9).eval()
        sd = a.state_dict()
        sd["pos_embed"] = b.pos_embed.detach().clone()  # the frozen table of b's own rule
        b.load_state_dict(sd)
        out = a(x, t, y)
        gap = ((out - b(x, t, y)).abs().max() / out.abs().max()).item()  # relative to the output's scale
        assert (gap < 1e-5) if same else (gap > 1e-2), (pos, gap)


def test_rope_needs_head_width_divisible_by_four():
    from ditlab.errors import ModelError

    with pytest.raises(ModelError, match="head width divisible by 4"):
        _cfg(hidden_size=36, num_heads=6, pos_embed="rope")  # heads of 6


def test_sincos_at_fractional_coordinates():
    emb = sincos_2d_at(8, torch.tensor([0.5]), torch.tensor([0.25]))
    assert emb[0, 0].item() == pytest.approx(math.sin(0.25)) and emb[0, 4].item() == pytest.approx(math.sin(0.5))

"""diffusers' PixArtTransformer2DModel <-> ditlab's PixArt DiT: outputs equal both ways, PixArt-α XL/2's
parameter count, the CLI and its refusals."""
from __future__ import annotations

import json

import pytest
import torch

from ditlab.cli import main
from ditlab.errors import ModelError
from ditlab.interop import from_diffusers, to_diffusers
from ditlab.models import DiT, create_model, load_pretrained

TOL = dict(rtol=0, atol=1e-5)  # fp32


def _random(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:  # ditlab's frozen sin-cos positions stay what they are
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def _native(seed: int = 0, interpolation_scale: float | None = None, out_channels: int = 8):
    from diffusers import PixArtTransformer2DModel

    tr = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  out_channels=out_channels, num_layers=2, cross_attention_dim=32, sample_size=8,
                                  patch_size=2, caption_channels=12, interpolation_scale=interpolation_scale,
                                  use_additional_conditions=False)
    return _random(tr, seed)


def _tiny(**kw) -> DiT:
    return create_model("DiT-Test/2", **{**dict(block="pixart", input_size=8, num_classes=0, context_dim=12,
                                               pooled_dim=0, learn_sigma=True, pos_base_size=4), **kw})


def _inputs(n=3, h=8, w=8):
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(n, 7, dtype=torch.bool)
    mask[1, 3:] = False  # a padded prompt
    mask[2, 1:] = False  # one real token
    return (torch.randn(n, 4, h, w, generator=g), torch.tensor([0.0, 370.0, 999.0])[:n],
            torch.randn(n, 7, 12, generator=g), mask[:n])


def _diffusers_out(tr, x, t, ctx, mask):
    with torch.no_grad():
        return tr(x, encoder_hidden_states=ctx, encoder_attention_mask=mask.float(), timestep=t).sample


@pytest.mark.parametrize("scale", [None, 2.0])
def test_import_native_diffusers_model(scale):
    tr = _native(interpolation_scale=scale)
    model = from_diffusers(tr)
    assert isinstance(model, DiT) and model.config.block == "pixart" and model.config.name == "PixArt-custom"
    assert model.config.pos_scale == (scale or 1.0) and model.config.learn_sigma
    for size in [(8, 8), (12, 4)]:  # another resolution and aspect ratio: PixArt's interpolated positions
        x, t, ctx, mask = _inputs(h=size[0], w=size[1])
        with torch.no_grad():
            ours = model(x, t, context=ctx, context_mask=mask)
        torch.testing.assert_close(ours, _diffusers_out(tr, x, t, ctx, mask), **TOL)
    again = to_diffusers(model).state_dict()  # round trip: the same tensors
    assert set(again) == set(tr.state_dict())
    for key, value in tr.state_dict().items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("base", [4, 0])
def test_export_matches_diffusers_forward(base):
    model = _random(_tiny() if base else create_model(
        "DiT-Test/2", block="pixart", input_size=8, num_classes=0, context_dim=12, learn_sigma=False))
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        ours = model(x, t, context=ctx, context_mask=mask)
    torch.testing.assert_close(_diffusers_out(to_diffusers(model), x, t, ctx, mask), ours, **TOL)


@pytest.mark.parametrize("overrides,problem", [(dict(pooled_dim=6), "pooled prompt vector"),
                                               (dict(learned_null=True), "learned null token"),
                                               (dict(qk_norm=True), "qk-norm"),
                                               (dict(pos_embed="rope"), "positions other than PixArt's")])
def test_export_refuses_what_pixart_cannot_hold(overrides, problem):
    with pytest.raises(ModelError, match=problem) as err:
        to_diffusers(_tiny(**overrides))
    assert "\n" not in str(err.value)


def test_import_refuses_pixart_alpha_1024_size_embedders():
    from diffusers import PixArtTransformer2DModel

    tr = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, num_layers=1, cross_attention_dim=32,
                                  sample_size=8, caption_channels=12, use_additional_conditions=True)
    with pytest.raises(ModelError, match="aspect-ratio embedders") as err:
        from_diffusers(tr)
    assert "\n" not in str(err.value)


def test_pixart_alpha_xl2_parameters_equal_diffusers_on_meta():
    """PixArt-alpha/PixArt-XL-2-512x512's transformer config; ditlab's frozen sin-cos table is not a weight."""
    from diffusers import PixArtTransformer2DModel

    from ditlab.interop.pixart import pixart_fields
    from ditlab.interop.sd3 import _registered_name

    with torch.device("meta"):
        tr = PixArtTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                      num_layers=28, cross_attention_dim=1152, sample_size=64, patch_size=2,
                                      caption_channels=4096, interpolation_scale=1, use_additional_conditions=False)
    ours = create_model("PixArt-alpha-XL/2", device="meta")
    theirs = sum(p.numel() for p in tr.parameters())
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == theirs
    assert round(theirs / 1e6) == 611  # the paper's 0.6B (§2.3)
    assert _registered_name(pixart_fields(tr.config)) == "PixArt-alpha-XL/2"


def test_cli_round_trip(tmp_path, capsys):
    from ditlab.sampling.loading import PIPELINE_FILE

    tr = _native(out_channels=8)
    tr.save_pretrained(str(tmp_path / "pixart" / "transformer"))  # as in a PixArtAlphaPipeline folder
    assert main(["convert", "diffusers", str(tmp_path / "pixart"), str(tmp_path / "ours")]) == 0
    spec = json.loads((tmp_path / "ours" / PIPELINE_FILE).read_text())
    assert spec["process"]["kind"] == "ddpm" and spec["process"]["learn_sigma"] is True
    assert spec["condition"]["kind"] == "text" and spec["condition"]["context_dim"] == 12
    model = load_pretrained(tmp_path / "ours")
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context=ctx, context_mask=mask), _diffusers_out(tr, x, t, ctx, mask),
                                   **TOL)
    assert main(["convert", "to-diffusers", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    from diffusers import PixArtTransformer2DModel

    back = PixArtTransformer2DModel.from_pretrained(str(tmp_path / "back"))
    torch.testing.assert_close(_diffusers_out(back, x, t, ctx, mask), _diffusers_out(tr, x, t, ctx, mask),
                               rtol=0, atol=0)


def test_cli_refuses_another_architecture(tmp_path, capsys):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=2).save_pretrained(str(tmp_path / "vae"))
    code = main(["convert", "diffusers", str(tmp_path / "vae"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "AutoencoderKL, which ditlab cannot convert" in err[0] and "PixArtTransformer2DModel" in err[0]
    assert not (tmp_path / "out").exists()

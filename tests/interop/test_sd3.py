"""diffusers' SD3Transformer2DModel <-> ditlab's MMDiT: outputs equal both ways, the CLI, the pipeline spec."""
from __future__ import annotations

import json

import pytest
import torch

from ditlab.cli import main
from ditlab.errors import CheckpointError, ModelError
from ditlab.interop import from_diffusers, to_diffusers
from ditlab.models import create_model, load_pretrained
from ditlab.models.mmdit import MMDiT

TOL = dict(rtol=0, atol=1e-5)  # fp32; measured: 0 (the same operations in the same order)


def _random(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def _tiny(**kw) -> MMDiT:
    # SD3's geometry in small: a 12x12 position table on a 4-token base (8x8 latents, patch 2)
    return create_model("MMDiT-Test/2", input_size=8, context_dim=12, pooled_dim=6, pos_max_size=12,
                        pos_base_size=4, **kw)


def _native_sd3(seed: int = 0, qk_norm: str | None = None):
    from diffusers import SD3Transformer2DModel

    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=32,
                               pooled_projection_dim=6, out_channels=4, pos_embed_max_size=12, qk_norm=qk_norm)
    return _random(tr, seed)


def _inputs(n=3, h=8, w=8):
    g = torch.Generator().manual_seed(5)
    return (torch.randn(n, 4, h, w, generator=g), torch.tensor([0.0, 0.37, 1.0])[:n],
            torch.randn(n, 7, 12, generator=g), torch.randn(n, 6, generator=g))


def _diffusers_out(tr, x, t, ctx, pooled):
    with torch.no_grad():  # diffusers' timestep is ditlab's t times timestep_scale (1000, SD3's sigma scale)
        return tr(x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t * 1000).sample


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (6, 12)])
def test_export_matches_diffusers_forward(qk_norm, size):
    model = _random(_tiny(qk_norm=qk_norm))
    x, t, ctx, pooled = _inputs(h=size[0], w=size[1])
    with torch.no_grad():
        ours = model(x, t, context=ctx, pooled=pooled)
    torch.testing.assert_close(_diffusers_out(to_diffusers(model), x, t, ctx, pooled), ours, **TOL)


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_import_native_diffusers_model(qk_norm):
    tr = _native_sd3(qk_norm=qk_norm)
    model = from_diffusers(tr)
    assert isinstance(model, MMDiT) and model.config.qk_norm == (qk_norm is not None)
    assert model.config.timestep_scale == 1000.0 and model.config.name == "MMDiT-custom"
    for size in [(8, 8), (10, 6)]:
        x, t, ctx, pooled = _inputs(h=size[0], w=size[1])
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, context=ctx, pooled=pooled),
                                       _diffusers_out(tr, x, t, ctx, pooled), **TOL)
    again = to_diffusers(model).state_dict()  # round trip: the same tensors
    assert set(again) == set(tr.state_dict())
    for key, value in tr.state_dict().items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=1e-7 if key == "pos_embed.pos_embed" else 0,
                                   msg=key)


def test_import_refuses_what_mmdit_is_not():
    from diffusers import SD3Transformer2DModel

    sd35 = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=32,
                                 pooled_projection_dim=6, out_channels=4, pos_embed_max_size=12,
                                 dual_attention_layers=(0,))
    with pytest.raises(ModelError, match="dual-attention") as err:
        from_diffusers(sd35)
    assert "\n" not in str(err.value)
    tr = _native_sd3()
    with torch.no_grad():
        tr.pos_embed.pos_embed.add_(0.5)  # a learned table ditlab's closed form cannot hold
    with pytest.raises(CheckpointError, match="position table"):
        from_diffusers(tr)


@pytest.mark.parametrize("overrides,problem", [(dict(pos_embed="rope"), "rope positions"),
                                               (dict(pooled_dim=0), "no pooled prompt vector")])
def test_export_refuses_what_sd3_cannot_hold(overrides, problem):
    model = create_model("MMDiT-Test/2", input_size=8, context_dim=12, **{"pooled_dim": 6, "pos_max_size": 12,
                                                                         "pos_base_size": 4, **overrides})
    with pytest.raises(ModelError, match=problem):
        to_diffusers(model)
    with pytest.raises(ModelError, match="no counterpart of block 'u-vit'"):
        to_diffusers(create_model("U-ViT-Test/2", input_size=8))


def test_sd3_medium_config_is_the_registered_one():
    from diffusers import SD3Transformer2DModel

    from ditlab.interop.sd3 import _registered_name, sd3_fields

    with torch.device("meta"):  # stabilityai/stable-diffusion-3-medium's transformer/config.json
        tr = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                   caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                   pos_embed_max_size=192)
    assert _registered_name(sd3_fields(tr.config)) == "SD3-medium"


class _RandomText:
    """A stand-in text condition (TextCondition is the text-to-image issue's): random token features."""

    kind = "text"

    def null(self, n, device="cpu"):
        return {"context": torch.zeros(n, 7, 12), "pooled": torch.zeros(n, 6)}

    def describe(self, cond):
        return ["random text"] * next(iter(cond.values())).shape[0]


def test_cli_round_trip_and_the_converted_folder_samples(tmp_path, capsys):
    from ditlab.sampling import Pipeline
    from ditlab.sampling.loading import PIPELINE_FILE, SD3_PIPELINE, _build_process

    tr = _native_sd3(qk_norm="rms_norm")
    tr.save_pretrained(str(tmp_path / "sd3" / "transformer"))  # as in a StableDiffusion3Pipeline folder
    assert main(["convert", "diffusers", str(tmp_path / "sd3"), str(tmp_path / "ours")]) == 0
    spec = json.loads((tmp_path / "ours" / PIPELINE_FILE).read_text())
    assert spec["condition"] == {**SD3_PIPELINE["condition"], "context_dim": 12, "pooled_dim": 6}
    assert spec["process"] == {"kind": "flow", "shift": 3.0, "time_sampling": "logit_normal"}
    model = load_pretrained(tmp_path / "ours")
    x, t, ctx, pooled = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context=ctx, pooled=pooled), _diffusers_out(tr, x, t, ctx, pooled),
                                   **TOL)
    assert main(["convert", "to-diffusers", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert "timestep = ditlab's t x 1000" in capsys.readouterr().err
    from diffusers import SD3Transformer2DModel

    back = SD3Transformer2DModel.from_pretrained(str(tmp_path / "back"))
    torch.testing.assert_close(_diffusers_out(back, x, t, ctx, pooled), _diffusers_out(tr, x, t, ctx, pooled),
                               rtol=0, atol=0)
    # the folder samples through Pipeline with SD3's process and sampler (network level: random text tensors)
    pipe = Pipeline(model, _build_process(spec["process"]), autoencoder=None, condition=_RandomText(),
                    latent_shape=(4, 8, 12))
    cond = {"context": ctx[:2], "pooled": pooled[:2]}
    got = pipe(cond=cond, seed=0, steps=4, cfg_scale=2.0, decode=False, return_latents=True)
    assert got.latents.shape == (2, 4, 8, 12) and torch.isfinite(got.latents).all()
    again = pipe(cond={k: v[1:] for k, v in cond.items()}, indices=[1], seed=0, steps=4, cfg_scale=2.0, decode=False,
                 return_latents=True)
    torch.testing.assert_close(again.latents[0], got.latents[1])  # per-sample seeds hold for text models too


def test_cli_refuses_other_diffusers_architectures(tmp_path, capsys):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    code = main(["convert", "diffusers", str(folder), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds a diffusers UNet2DConditionModel, which ditlab cannot convert" in err[0]
    assert not (tmp_path / "out").exists()

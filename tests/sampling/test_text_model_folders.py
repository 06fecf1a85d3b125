"""Converted text-to-image folders (diffusers' PixArt and SD3 transformers) sample from prompts through
``Pipeline.from_pretrained`` and ``ditlab sample`` with a local text-encoder folder and a local autoencoder,
the prompts encoded on demand (``EncodedTextCondition``); and the one-line refusals."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.conditioning.encoded_text import EncodedTextCondition
from ditlab.errors import UserError
from ditlab.sampling import Pipeline

sys.path.insert(0, str(Path(__file__).parents[1] / "text"))
from tiny_encoders import make_clip, make_t5  # noqa: E402

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32, sample_size=32,
                scaling_factor=0.18215)  # 32-px images <-> 8x8x4 latents


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A VAE, a T5 and a CLIP folder, a PixArt transformer on the T5 (32-wide) and an SD3 one on the CLIP
    (32-wide tokens, 24-wide projected pooled vector), each converted by ``ditlab convert diffusers``."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel, SD3Transformer2DModel

    root = tmp_path_factory.mktemp("folders")
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).eval().save_pretrained(root / "vae")
    make_t5(root / "t5")
    make_clip(root / "clip")
    pixart = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                      num_layers=2, cross_attention_dim=32, sample_size=8, patch_size=2,
                                      caption_channels=32, use_additional_conditions=False)
    sd3 = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                                pooled_projection_dim=24, out_channels=4, pos_embed_max_size=12)
    for name, tr in (("pixart", pixart), ("sd3", sd3)):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in tr.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        tr.save_pretrained(str(root / f"{name}-diffusers" / "transformer"))
        assert main(["convert", "diffusers", str(root / f"{name}-diffusers"), str(root / name)]) == 0
    return root


@pytest.mark.parametrize("name,encoder,masked", [("pixart", "t5", True), ("sd3", "clip", False)])
def test_converted_folder_samples_from_prompts(folders, name, encoder, masked):
    from ditlab.text import load_text_encoder

    pipe = Pipeline.from_pretrained(folders / name, autoencoder=str(folders / "vae"),
                                    text_encoder=str(folders / encoder))
    assert isinstance(pipe.condition, EncodedTextCondition) and pipe.condition.kind == "text"
    prompts = ["a thick 7 leaning left", "a thin 3"]
    cond = pipe.condition.prompts(prompts)
    want = load_text_encoder(str(folders / encoder), max_length=pipe.condition.max_length).encode(prompts)
    torch.testing.assert_close(cond["context"], want["context"])
    # PixArt masks the padding; SD3 attends to every position (attend_padding)
    assert torch.equal(cond["context_mask"], want["context_mask"] if masked else torch.ones_like(want["context_mask"]))
    if name == "sd3":
        torch.testing.assert_close(cond["pooled"], want["pooled"])
    null = pipe.condition.null(2)  # the empty prompt's encoding, as the diffusers pipelines do
    torch.testing.assert_close(null["context"][0], load_text_encoder(str(folders / encoder), max_length=pipe.condition
                                                                     .max_length).encode([""])["context"][0])
    got = pipe(prompts=prompts, num=4, seed=0, steps=2, cfg_scale=2.0)
    assert got.images.shape == (4, 32, 32, 3) and got.descriptions == [prompts[0], prompts[0], prompts[1], prompts[1]]
    again = pipe(prompts=prompts[1:], num=1, seed=0, steps=2, cfg_scale=2.0, indices=[2], decode=False,
                 return_latents=True)
    full = pipe(prompts=prompts, num=4, seed=0, steps=2, cfg_scale=2.0, decode=False, return_latents=True)
    torch.testing.assert_close(again.latents[0], full.latents[2], rtol=0, atol=1e-4)  # per-sample seeds (batching)


def test_ditlab_sample_cli_on_a_converted_pixart_folder(folders, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    argv = ["sample", str(folders / "pixart"), "--autoencoder", str(folders / "vae"), "--text_encoder",
            str(folders / "t5"), "--prompt", "a bold 8", "--num", "2", "--steps", "2", "--out", str(grid)]
    assert main(argv) == 0, capsys.readouterr().err
    assert Image.open(grid).size[0] >= 2 * 32
    spec = json.loads((folders / "pixart" / "pipeline.json").read_text())
    assert spec["condition"] == {"kind": "text", "encoder": "t5-v1_1-xxl", "context_dim": 32, "pooled_dim": 0,
                                 "max_length": 120, "null": "empty", "attend_padding": False}
    assert spec["sampling"] == {"sampler": "dpmpp_2m", "steps": 20, "cfg_scale": 4.5}


@pytest.mark.parametrize("name,encoder,message", [
    ("pixart", None, "reads the prompts of a t5-v1_1-xxl encoder that ditlab does not ship: pass --text_encoder"),
    ("sd3", "t5", "gives 32-wide tokens and a 32-wide pooled vector; this model takes 32 and 24"),
])
def test_missing_or_mismatched_text_encoder_is_one_line(folders, tmp_path, capsys, name, encoder, message):
    argv = ["sample", str(folders / name), "--autoencoder", str(folders / "vae"), "--prompt", "a 7",
            "--out", str(tmp_path / "g.png")]
    if encoder is not None:
        argv += ["--text_encoder", str(folders / encoder)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "g.png").exists()


def test_a_converted_folder_cannot_train():
    cond = EncodedTextCondition("t5", 8, 32, 0)
    with pytest.raises(UserError, match="no caption table"):
        cond.records([{"caption": "a 7"}])

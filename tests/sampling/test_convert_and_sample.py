"""The flagship path from the command line: convert published DiT weights, then sample them.

``ditlab convert official CKPT out/ && ditlab sample out/ --autoencoder VAE_DIR --class 1 --num 4 --steps 5``
for official-layout checkpoints of registered geometries (random weights) and a small random diffusers
AutoencoderKL folder; the same through ``ditlab convert diffusers``; and the one-line refusals.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.interop import to_diffusers, to_official
from ditlab.models import create_model
from ditlab.sampling import Pipeline

# A narrow AutoencoderKL with the SD-VAE's blocks (downsample 4): 32-px images <-> 8x8x4 latents.
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32, sample_size=32,
                scaling_factor=0.18215)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    AutoencoderKL(**TINY_VAE).eval().save_pretrained(path)
    return path


def _random_dit(name: str, seed: int = 0, **options):
    model = create_model(name, input_size=8, num_classes=10, learn_sigma=True, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def _convert_and_sample(tmp_path, vae_dir, name: str, capsys) -> None:
    ckpt = tmp_path / "model.pt"
    torch.save(to_official(_random_dit(name)), ckpt)
    out = tmp_path / "out"
    assert main(["convert", "official", str(ckpt), str(out)]) == 0
    spec = json.loads((out / "pipeline.json").read_text())
    assert spec["process"] == {"kind": "ddpm", "schedule": "linear", "num_timesteps": 1000, "prediction": "eps",
                               "learn_sigma": True}
    assert spec["sampling"] == {"sampler": "ddpm", "steps": 250, "cfg_scale": 4.0}
    grid = tmp_path / "grid.png"
    assert main(["sample", str(out), "--autoencoder", str(vae_dir), "--class", "1", "--num", "4", "--steps", "5",
                 "--out", str(grid), "--out-npz", str(tmp_path / "s.npz")]) == 0, capsys.readouterr().err
    assert Image.open(grid).size[0] > 4 * 32
    pipe = Pipeline.from_pretrained(out, autoencoder=str(vae_dir))
    assert pipe.latent_shape == (4, 8, 8) and pipe.model.config.name == name
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (4, 32, 32, 3) and z["labels"].tolist() == [1] * 4
        np.testing.assert_array_equal(z["arr_0"], pipe(labels=[1], num=4, steps=5).images)


@pytest.mark.parametrize("name", ["DiT-Test/2", "DiT-T/4", "DiT-S/8", "DiT-B/4"])
def test_convert_official_then_sample(name, tmp_path, vae_dir, capsys):
    _convert_and_sample(tmp_path, vae_dir, name, capsys)


@pytest.mark.slow  # 675 M random parameters written, read and converted: ~1 min, ~8 GB of memory
def test_convert_official_xl2_then_sample(tmp_path, vae_dir, capsys):
    _convert_and_sample(tmp_path, vae_dir, "DiT-XL/2", capsys)


def test_convert_diffusers_then_sample(tmp_path, vae_dir, capsys):
    model = _random_dit("DiT-Test/2", seed=1, timestep_freq_shift=1.0)  # diffusers' own timestep sinusoid
    to_diffusers(model).save_pretrained(str(tmp_path / "transformer"))
    out = tmp_path / "out"
    assert main(["convert", "diffusers", str(tmp_path / "transformer"), str(out)]) == 0
    assert main(["sample", str(out), "--autoencoder", str(vae_dir), "--class", "3", "--num", "2", "--steps", "5",
                 "--sampler", "ddim", "--out", str(tmp_path / "g.png")]) == 0, capsys.readouterr().err
    pipe = Pipeline.from_pretrained(out, autoencoder=str(vae_dir))
    x = torch.randn(2, 4, 8, 8)
    t, y = torch.tensor([10.0, 500.0]), torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, t, y=y), model(x, t, y=y), rtol=1e-5, atol=1e-5)


def test_model_folders_without_autoencoder_or_of_unknown_layout_are_refused(tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    torch.save(to_official(_random_dit("DiT-Test/2")), ckpt)
    assert main(["convert", "official", str(ckpt), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    cases = [
        (["sample", str(tmp_path / "out"), "--out", str(tmp_path / "a.png")], "has no autoencoder: pass --autoencoder"),
        (["sample", str(tmp_path / "out"), "--autoencoder", "pixel", "--prompt", "a cat", "--out",
          str(tmp_path / "a.png")], "use --class instead of a prompt"),
        (["sample", str(tmp_path), "--out", str(tmp_path / "a.png")], "neither a run directory nor a model folder"),
        (["sample-many", str(tmp_path / "out"), "--num", "2", "--out", str(tmp_path / "many")],
         "has no autoencoder: pass --autoencoder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "a.png").exists()

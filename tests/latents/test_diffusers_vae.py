"""The diffusers AutoencoderKL adapter: numbers against diffusers itself, identity, loading, errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import SD_VAE_CONFIG, TINY_VAE_CONFIG, make_vae

from ditlab.autoencoders import load_autoencoder
from ditlab.autoencoders.diffusers_vae import DiffusersVAE, load_diffusers_vae
from ditlab.cli import main
from ditlab.errors import CheckpointError


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.slow  # the 84M-parameter SD-VAE: ~10 s alone, 40 s on a shared 2-core machine
def test_sd_vae_geometry_and_numbers_match_diffusers(tmp_path):
    """The SD-VAE config through ditlab's loader: KL-f8, 4 channels, 0.18215, and the same math
    as diffusers (mean / sample / decode with the scaling factor applied and undone)."""
    vae = make_vae(SD_VAE_CONFIG)
    vae.save_pretrained(tmp_path / "sd")
    ae = load_autoencoder(tmp_path / "sd")
    assert isinstance(ae, DiffusersVAE)
    assert (ae.latent_channels, ae.downsample, ae.scaling_factor, ae.image_channels) == (4, 8, 0.18215, 3)
    assert ae.latent_shape(256) == (4, 32, 32)
    x = _images(2, 16)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        z = ae.encode(x)  # posterior mean
        assert z.shape == (2, 4, 2, 2)
        torch.testing.assert_close(z, post.mean * 0.18215, rtol=0, atol=1e-6)
        zs = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(zs, (post.mean + post.std * eps) * 0.18215, rtol=0, atol=1e-6)
        assert (zs - z).abs().max() > 1e-3  # a sample is not the mean
        torch.testing.assert_close(
            ae.decode(z[:1]), vae.decode(z[:1] / 0.18215).sample.clamp(-1, 1), rtol=0, atol=1e-5
        )


def test_shift_factor_is_applied_and_undone(tmp_path):
    """SD3-style VAEs store (z - shift) * scale; decode must invert exactly that."""
    config = dict(TINY_VAE_CONFIG, scaling_factor=1.5305, shift_factor=0.0609)
    vae = make_vae(config)
    vae.save_pretrained(tmp_path / "v")
    ae = load_diffusers_vae(tmp_path / "v")
    x = _images(2, 16)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        z = ae.encode(x)
        torch.testing.assert_close(z, (mean - 0.0609) * 1.5305, rtol=0, atol=1e-6)
        torch.testing.assert_close(ae.decode(z), vae.decode(mean).sample.clamp(-1, 1), rtol=0, atol=1e-5)


def test_identity_follows_weights_and_config_not_path_or_dtype(tmp_path, tiny_vae_dir):
    shutil.copytree(tiny_vae_dir, tmp_path / "copy")
    a = load_diffusers_vae(tiny_vae_dir)
    assert a.identity().startswith("AutoencoderKL:")
    assert load_diffusers_vae(tmp_path / "copy").identity() == a.identity()
    assert load_diffusers_vae(tiny_vae_dir, dtype=torch.float16).identity() == a.identity()
    # One weight changed -> another autoencoder.
    vae = make_vae(TINY_VAE_CONFIG)
    with torch.no_grad():
        next(vae.parameters()).view(-1)[0] += 1e-3
    vae.save_pretrained(tmp_path / "changed")
    assert load_diffusers_vae(tmp_path / "changed").identity() != a.identity()
    # Same weights, another scaling factor -> another latent space.
    cfg = json.loads((tmp_path / "copy" / "config.json").read_text())
    cfg["scaling_factor"] = 0.13025
    (tmp_path / "copy" / "config.json").write_text(json.dumps(cfg))
    other = load_diffusers_vae(tmp_path / "copy")
    assert other.scaling_factor == 0.13025 and other.identity() != a.identity()


def test_hub_id_resolves_from_local_cache_only(tmp_path, tiny_vae_dir, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        load_autoencoder("sd-vae-ft-ema")
    # The hub cache layout: models--org--name/{refs/main, snapshots/<sha>/...}.
    repo = tmp_path / "models--stabilityai--sd-vae-ft-ema"
    shutil.copytree(tiny_vae_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for spec in ("sd-vae-ft-ema", "stabilityai/sd-vae-ft-ema"):
        ae = load_autoencoder(spec)
        assert isinstance(ae, DiffusersVAE)
        assert ae.identity() == load_diffusers_vae(tiny_vae_dir).identity()
    with pytest.raises(CheckpointError, match="sd-vae-ft-mse is not in the local"):
        load_diffusers_vae("sd-vae-ft-mse")


def test_bad_autoencoder_paths_are_one_line_errors(tmp_path, tiny_vae_dir, image_folder, capsys):
    with pytest.raises(CheckpointError, match="not found"):
        load_diffusers_vae(tmp_path / "nowhere")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="does not hold an AutoencoderKL"):
        load_diffusers_vae(tmp_path / "unet")
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_diffusers_vae(tmp_path / "file.safetensors")
    # A config without its weights, and weights that are not a safetensors file.
    shutil.copytree(tiny_vae_dir, tmp_path / "noweights")
    for f in (tmp_path / "noweights").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="cannot load AutoencoderKL"):
        load_diffusers_vae(tmp_path / "noweights")
    shutil.copytree(tiny_vae_dir, tmp_path / "corrupt")
    for f in (tmp_path / "corrupt").glob("*.safetensors"):
        f.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="cannot load AutoencoderKL"):
        load_diffusers_vae(tmp_path / "corrupt")
    # Through the CLI: exit code 2, one line, no cache left behind.
    for bad in (tmp_path / "nowhere", tmp_path / "unet", tmp_path / "noweights"):
        out = tmp_path / f"cache-{bad.name}"
        code = main(["extract-latents", str(image_folder), "--autoencoder", str(bad), "--image-size", "32",
                     "--out", str(out), "--workers", "0", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err, err
        assert not (out / "index.json").exists()

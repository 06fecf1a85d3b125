"""ditlab's KL-VAE and the pixel autoencoder: geometry, KL closed form, save/load, scaling, training."""
from __future__ import annotations

import json

import pytest
import torch

from ditlab.autoencoders import KLAutoencoder, KLAutoencoderConfig, PixelAutoencoder, train_autoencoder
from ditlab.autoencoders.train import kl_divergence, measure_latent_std, reconstruction_error
from ditlab.data import build_dataset


def _tiny(downsample=2, image_channels=1, latent_channels=3):
    levels = {1: 1, 2: 2, 4: 3, 8: 4}[downsample]
    cfg = KLAutoencoderConfig(image_channels, latent_channels, downsample, (8,) * levels, (1,) * levels, 0.5)
    torch.manual_seed(0)
    return KLAutoencoder(cfg).eval()


@pytest.mark.parametrize("downsample", [1, 2, 4, 8])
def test_geometry_for_every_downsampling_factor(downsample):
    model = _tiny(downsample, image_channels=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 3, 16 // downsample, 16 // downsample) == (2, *model.latent_shape(16))
    y = model.decode(z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (model.downsample, model.latent_channels, model.image_channels) == (downsample, 3, 3)


def test_encode_is_scaled_posterior_mean_and_sampling_draws_around_it():
    model = _tiny()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    mean, logvar = model.posterior(x)
    assert torch.allclose(model.encode(x), mean * 0.5)
    model.latent_shift.fill_(0.25)
    assert torch.allclose(model.encode(x), (mean - 0.25) * 0.5)
    assert torch.allclose(model.decode(model.encode(x)), model.decoder(mean).clamp(-1, 1), atol=1e-5)
    model.latent_shift.zero_()
    gen = torch.Generator().manual_seed(1)
    draws = model.encode(x.repeat(400, 1, 1, 1), sample=True, generator=gen).view(400, *mean.shape)
    # sample = (mean + exp(logvar / 2) * eps) * scale: check both moments.
    assert torch.allclose(draws.mean(0), mean * 0.5, atol=0.25 * 0.5 * (0.5 * logvar).exp().max().item())
    assert torch.allclose(draws.std(0), 0.5 * (0.5 * logvar).exp(), rtol=0.2)
    # decode undoes the scaling before the decoder
    assert torch.allclose(model.decode(model.encode(x)), model.decoder(mean).clamp(-1, 1), atol=1e-6)


def test_kl_matches_torch_distributions():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert torch.allclose(kl_divergence(mean, logvar), torch.distributions.kl_divergence(q, p).mean(), atol=1e-6)
    assert kl_divergence(torch.zeros(5), torch.zeros(5)).item() == 0.0


def test_save_load_round_trip_is_exact(tmp_path):
    from ditlab.autoencoders import load_autoencoder

    model = _tiny(4, image_channels=3)
    model.save(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert cfg["type"] == "ditlab-kl-vae" and cfg["scaling_factor"] == 0.5 and cfg["identity"] == model.identity()
    loaded = load_autoencoder(tmp_path / "vae", channels=3)
    assert isinstance(loaded, KLAutoencoder) and loaded.config == model.config
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))
    assert loaded.identity() == model.identity()
    assert loaded.identity().startswith("kl-vae-f4c3-")


def test_identity_tracks_weights_and_scaling_factor():
    model = _tiny()
    first = model.identity()
    model.scaling_factor = 0.25
    second = model.identity()
    with torch.no_grad():
        model.decoder.conv_out.bias.add_(1e-3)
    assert len({first, second, model.identity()}) == 3


def test_pixel_autoencoder_is_the_identity():
    ae = PixelAutoencoder(1)
    x = torch.linspace(-1.5, 1.5, 16).view(1, 1, 4, 4)
    assert torch.equal(ae.encode(x), x)
    assert torch.equal(ae.decode(x), x.clamp(-1, 1))
    assert (ae.latent_channels, ae.downsample, ae.scaling_factor, ae.image_channels) == (1, 1, 1.0, 1)
    assert ae.identity() == "pixel-1ch" and PixelAutoencoder(3).identity() == "pixel-3ch"


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", 8)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    cfg = KLAutoencoderConfig(1, 4, 2, (16, 32), (1, 1))
    model = train_autoencoder(digits, out, config=cfg, steps=150, batch_size=32, lr=3e-3, kl_weight=1e-4,
                              seed=0, progress=False, device="cpu")
    return model, out


def test_scaling_factor_is_one_over_measured_std(digits, trained):
    model, out = trained
    images = digits.tensors()[0].float() / 127.5 - 1
    mean, _ = model.posterior(images)  # unscaled (N, c, h, w)
    channel_mean = mean.mean(dim=(0, 2, 3))
    centred_std = (mean - channel_mean.view(1, -1, 1, 1)).pow(2).mean().sqrt().item()
    assert torch.allclose(model.latent_shift, channel_mean, atol=1e-4)
    assert model.scaling_factor == pytest.approx(1.0 / centred_std, rel=1e-3)
    z = model.encode(images)
    assert z.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-3)  # unit scale around zero
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # every channel centred
    assert json.loads((out / "config.json").read_text())["scaling_factor"] == model.scaling_factor
    assert 1.0 / measure_latent_std(model, digits) == pytest.approx(model.scaling_factor)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["latent_shift"] == pytest.approx(model.latent_shift.tolist(), abs=1e-5)


def test_short_training_on_digits_cuts_reconstruction_error(digits, trained):
    model, _ = trained
    torch.manual_seed(0)
    untrained = KLAutoencoder(model.config).eval()  # same seed, same initial weights
    before = reconstruction_error(untrained, digits)
    after = reconstruction_error(model, digits)
    test_after = reconstruction_error(model, build_dataset("digits", 8, split="test"))
    assert after < 0.25 * before, (before, after)
    assert test_after < 0.35 * before, (before, test_after)


def test_training_is_deterministic_for_a_seed(digits, tmp_path):
    cfg = KLAutoencoderConfig(1, 2, 2, (8, 8), (0, 0))
    a = train_autoencoder(digits, tmp_path / "a", config=cfg, steps=5, batch_size=8, progress=False, device="cpu")
    b = train_autoencoder(digits, tmp_path / "b", config=cfg, steps=5, batch_size=8, progress=False, device="cpu")
    assert a.identity() == b.identity()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_the_graphed_step_trains_the_same_vae_on_cpu(digits, tmp_path):
    """cuda_graphs=True (opt-in, for GPUs) runs the same eager step on the CPU: the same file, byte for byte."""
    cfg = KLAutoencoderConfig(1, 2, 2, (8, 8), (0, 0))
    train_autoencoder(digits, tmp_path / "a", config=cfg, steps=5, batch_size=8, progress=True, device="cpu")
    train_autoencoder(digits, tmp_path / "b", config=cfg, steps=5, batch_size=8, progress=True, device="cpu",
                      cuda_graphs=True)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("downsample", [1, 2, 4, 8])
def test_default_architecture_geometry(downsample):
    cfg = KLAutoencoderConfig.default(3, 4, downsample)
    model = KLAutoencoder(cfg).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 4, 32 // downsample, 32 // downsample)
    assert model.decode(z).shape == x.shape
    # The encoder is the light half: it also encodes the whole dataset once.
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    assert n_enc < n_dec
    with pytest.raises(ValueError):
        KLAutoencoderConfig.default(3, 4, 3)

"""load_autoencoder dispatch and refusals, and the ``ditlab train-vae`` command."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from ditlab.autoencoders import KLAutoencoder, KLAutoencoderConfig, PixelAutoencoder, load_autoencoder
from ditlab.cli import main
from ditlab.errors import CheckpointError, ModelError


@pytest.fixture
def saved_vae(tmp_path):
    torch.manual_seed(0)
    model = KLAutoencoder(KLAutoencoderConfig(1, 2, 2, (8, 8), (0, 0), scaling_factor=0.7))
    return model, model.save(tmp_path / "vae")


def test_pixel_spec_and_channels():
    ae = load_autoencoder("pixel", channels=1)
    assert isinstance(ae, PixelAutoencoder) and ae.image_channels == 1 and ae.latent_channels == 1
    assert load_autoencoder("pixel").image_channels == 3


def test_channel_mismatch_is_a_model_error(saved_vae):
    _, path = saved_vae
    with pytest.raises(ModelError, match="1-channel images but the data has 3"):
        load_autoencoder(path, channels=3)


def test_missing_and_foreign_directories_are_checkpoint_errors(tmp_path, saved_vae):
    with pytest.raises(CheckpointError, match="not found"):
        load_autoencoder(tmp_path / "nope")
    (tmp_path / "bare").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_autoencoder(tmp_path / "bare")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": "DiT-S/2"}))
    with pytest.raises(CheckpointError, match="holds no autoencoder"):
        load_autoencoder(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_autoencoder(other)
    _, path = saved_vae
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="do not load"):
        load_autoencoder(path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_autoencoder(path)


def test_diffusers_specs_dispatch_to_the_adapter(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("ditlab.autoencoders.diffusers_vae")
    fake.load_diffusers_vae = lambda spec: calls.append(spec) or PixelAutoencoder(3)
    monkeypatch.setitem(sys.modules, "ditlab.autoencoders.diffusers_vae", fake)
    d = tmp_path / "sdvae"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    load_autoencoder(d)
    load_autoencoder("sd-vae-ft-ema")
    load_autoencoder("stabilityai/sd-vae-ft-mse")
    assert calls == [str(d), "sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse"]


def test_missing_diffusers_adapter_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ditlab.autoencoders.diffusers_vae", None)  # import fails
    with pytest.raises(ModelError, match="diffusers"):
        load_autoencoder("sd-vae-ft-mse")


def _train_vae(tmp_path, *extra):
    return main(["train-vae", "digits", "--out", str(tmp_path / "vae"), "--image-size", "8", "--downsample", "2",
                 "--steps", "3", "--batch-size", "8", "--no-progress", *extra])


def test_train_vae_command_writes_a_loadable_autoencoder(tmp_path, capsys):
    assert _train_vae(tmp_path) == 0
    out = capsys.readouterr().out
    assert "scaling factor" in out and "latents 4x4x4" in out
    ae = load_autoencoder(tmp_path / "vae", channels=1)
    assert isinstance(ae, KLAutoencoder) and ae.downsample == 2 and ae.latent_channels == 4
    assert f"{ae.scaling_factor:.4f}" in out
    # Refuses to overwrite unless asked.
    assert _train_vae(tmp_path) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _train_vae(tmp_path, "--overwrite", "--seed", "1") == 0
    assert load_autoencoder(tmp_path / "vae").identity() != ae.identity()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--downsample", "3"], "--downsample must be 1, 2, 4 or 8"),
        (["--image-size", "10", "--downsample", "4"], "not divisible"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--kl-weight", "-1"], "--kl-weight"),
        (["--channels", "2"], "--channels must be 1 or 3"),
    ],
)
def test_train_vae_bad_flags_are_one_line_errors(tmp_path, capsys, args, message):
    argv = ["train-vae", "digits", "--out", str(tmp_path / "v"), "--no-progress", "--steps", "2", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "v").exists()


def test_train_vae_bad_data_and_output(tmp_path, capsys):
    assert main(["train-vae", str(tmp_path / "missing"), "--out", str(tmp_path / "v")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train-vae", str(tmp_path / "empty"), "--out", str(tmp_path / "v")]) == 2
    assert "no images found" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train-vae", "digits", "--out", str(blocker / "sub"), "--image-size", "8"]) == 2
    assert "(Not a directory): choose a writable --out" in capsys.readouterr().err
    assert main(["train-vae", "digits", "--out", str(blocker), "--image-size", "8"]) == 2
    assert "is a file" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["train-vae", "digits", "--out", str(busy), "--image-size", "8"]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_train_vae_on_an_image_folder_reports_skipped_files(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            image = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
            image.save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    argv = ["train-vae", str(tmp_path / "imgs"), "--out", str(tmp_path / "vae"), "--image-size", "8",
            "--downsample", "2", "--steps", "4", "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and "broken.png" in out
    ae = load_autoencoder(tmp_path / "vae", channels=3)
    assert ae.encode(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 4, 4)

"""``ditlab show``: the forward-process figure shows each process's own (alpha, sigma) and SNR on the same
noise, the patches figure counts H/p x W/p tokens of the autoencoder's latent, and unreadable inputs are
one-line errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.autoencoders import load_autoencoder
from ditlab.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
from ditlab.cli import main
from ditlab.diffusion import create_process
from ditlab.figures import format_snr, load_image, noising_figure, patches_figure, signal_and_noise


def _digit() -> torch.Tensor:
    """A 16x16 'digit': a bright bar on black, in [-1, 1]."""
    x = -torch.ones(1, 1, 16, 16)
    x[..., 3:13, 7:10] = 1.0
    return x


def test_signal_and_noise_are_the_processes_own():
    ddpm = create_process("ddpm", learn_sigma=False)
    alpha, sigma = signal_and_noise(ddpm, torch.tensor([0, 500, 999]))
    ab = ddpm.alphas_cumprod[[0, 500, 999]]
    torch.testing.assert_close(alpha, ab.sqrt())
    torch.testing.assert_close(sigma, (1 - ab).sqrt())
    alpha, sigma = signal_and_noise(create_process("flow"), torch.tensor([0.0, 0.25, 1.0]))
    torch.testing.assert_close(alpha, torch.tensor([1.0, 0.75, 0.0], dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64))


def test_format_snr():
    assert format_snr(1.0, 0.0) == "SNR inf" and format_snr(0.0, 1.0) == "SNR 0"
    assert format_snr(0.5, 0.5) == "SNR 1 (+0.0 dB)"
    assert format_snr(math.sqrt(0.1), math.sqrt(0.9)) == "SNR 0.111 (-9.5 dB)"


def test_noising_figure_rows_share_the_noise_and_label_the_snr():
    fig = noising_figure(_digit(), [0.0, 0.5, 1.0], seed=3)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_xlabel() for ax in axes[1]] == ["SNR inf", "SNR 1 (+0.0 dB)", "SNR 0"]  # flow: t = 0, 0.5, 1
    assert [ax.get_title() for ax in axes[0]] == ["step 0", "step 500", "step 999"]
    assert axes[0, 1].get_xlabel().startswith("SNR 0.0")  # DDPM's linear schedule at mid-way: SNR ~ 0.08
    clean = axes[1, 0].images[0].get_array().astype(float)
    flow_noise = axes[1, 2].images[0].get_array().astype(float)
    ddpm_end = axes[0, 2].images[0].get_array().astype(float)
    assert np.corrcoef(flow_noise.ravel(), ddpm_end.ravel())[0, 1] > 0.9  # the same eps in both rows
    assert abs(np.corrcoef(clean.ravel(), flow_noise.ravel())[0, 1]) < 0.5  # and no digit left at the end
    with pytest.raises(Exception, match="fractions in"):
        noising_figure(_digit(), [1.5])


def test_patches_figure_counts_tokens_of_the_latent():
    fig = patches_figure(_digit(), load_autoencoder("pixel", channels=1), [2, 4, 8, 3])
    titles = [ax.get_title() for ax in fig.axes]
    assert "p=2: 64 tokens" in titles and "p=4: 16 tokens" in titles and "p=8: 4 tokens" in titles
    assert "p=3: does not divide 16x16" in titles
    # a VAE with 4 latent channels and a downsampling of 4: a 4x4 latent; patch borders every p * 4 pixels
    vae = KLAutoencoder(KLAutoencoderConfig.default(1, 4, 4)).eval()
    fig = patches_figure(_digit(), vae, [2, 4])
    titles = [ax.get_title() for ax in fig.axes]
    assert [t for t in titles if t.startswith("latent ch")] == [f"latent ch {i} (4x4)" for i in range(4)]
    assert "p=2: 4 tokens" in titles and "p=4: 1 token" in titles
    grid_ax = next(ax for ax in fig.axes if ax.get_title() == "p=2: 4 tokens")
    vertical = {float(line.get_xdata()[0]) for line in grid_ax.lines if line.get_xdata()[0] == line.get_xdata()[1]}
    assert sorted(vertical) == [-0.5, 7.5, 15.5]


def test_load_image_reads_files_and_datasets(tmp_path):
    Image.fromarray(np.full((40, 30), 255, dtype=np.uint8), mode="L").save(tmp_path / "white.png")
    x = load_image(tmp_path / "white.png", image_size=16)
    assert x.shape == (1, 1, 16, 16) and float(x.min()) == 1.0  # grayscale stays one channel
    assert load_image("digits", index=5).shape == (1, 1, 8, 8)


def test_cli_writes_figures(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    assert main(["show", "noising", str(tmp_path / "c.png"), "--out", str(tmp_path / "n.png"), "--at", "0,0.5,1"]) == 0
    assert main(["show", "patches", "digits", "--index", "3", "--out", str(tmp_path / "p.png")]) == 0
    for name in ("n.png", "p.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200


@pytest.mark.parametrize("argv, message", [
    (["noising", "{tmp}/missing.png"], "is neither an image file, an image folder nor a built-in dataset"),
    (["noising", "{tmp}/bad.png"], "cannot read '{tmp}/bad.png' as an image"),
    (["patches", "{tmp}/bad.png"], "cannot read '{tmp}/bad.png' as an image"),
    (["noising", "digits", "--at", "0,x"], "--at takes comma-separated numbers"),
    (["noising", "digits", "--at", "0,2"], "--at takes fractions in [0, 1]"),
    (["noising", "digits", "--index", "99999"], "--index 99999 is outside the dataset"),
    (["patches", "digits", "--patch-sizes", "0"], "--patch-sizes must be >= 1"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["show", *argv, "--out", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message.replace("{tmp}", str(tmp_path)) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.png").exists()

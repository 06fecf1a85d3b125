"""Shared fixtures for the latent tests: a small image folder and small random AutoencoderKLs."""
from __future__ import annotations

import pytest
import torch
from latent_fakes import make_image_folder

# The Stable Diffusion VAE geometry (KL-f8): what DiT trains in.
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)
# The same blocks, narrower and shallower (downsample 4): fast enough for many encodes on CPU.
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32, sample_size=32, scaling_factor=0.18215,
)


def make_vae(config: dict, seed: int = 0):
    """A random AutoencoderKL. Built on the meta device and filled from one generator with
    PyTorch's default bounds (U(+-1/sqrt(fan_in)), norms at 1): the same distribution as the
    constructor's init, several times faster for the 84M-parameter SD-VAE."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    vae.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, module in vae.named_modules():
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if isinstance(module, torch.nn.GroupNorm):
                weight.fill_(1.0), bias.zero_()
            elif isinstance(weight, torch.nn.Parameter):
                bound = weight[0].numel() ** -0.5  # 1 / sqrt(fan_in)
                weight.uniform_(-bound, bound, generator=g)
                if isinstance(bias, torch.nn.Parameter):
                    bias.uniform_(-bound, bound, generator=g)
    assert all(p.device.type == "cpu" for p in vae.state_dict().values())
    return vae.eval()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Two classes of five random RGB images (36..44 x 40..48 px); treat as read-only."""
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A random AutoencoderKL saved with ``save_pretrained``; treat as read-only."""
    path = tmp_path_factory.mktemp("tiny_vae")
    make_vae(TINY_VAE_CONFIG).save_pretrained(path)
    return path

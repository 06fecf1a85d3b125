"""The autoencoder interface that DiT training and sampling see, and the pixel-space identity.

Every autoencoder maps images (N, C, H, W) in [-1, 1] to latents (N, latent_channels, H/d, W/d)
that are already multiplied by ``scaling_factor`` (so that they have roughly unit variance, the
role 0.18215 plays for the SD-VAE), and back.
"""
from __future__ import annotations

import torch
from torch import nn


class Autoencoder(nn.Module):
    """Base class: ``encode``/``decode`` plus the geometry the diffusion model needs."""

    latent_channels: int
    downsample: int
    scaling_factor: float
    image_channels: int

    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] -> scaled latents (N, c, H/d, W/d)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, c, h, w) -> images (N, C, h*d, w*d) clamped to [-1, 1]."""
        raise NotImplementedError

    def identity(self) -> str:
        """A short string that changes whenever the weights or the scaling factor change."""
        raise NotImplementedError

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(c, h, w) of the latents of one square image of side ``image_size``."""
        side = image_size // self.downsample
        return (self.latent_channels, side, side)


def encode_frames(autoencoder: Autoencoder, x: torch.Tensor, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (N, C, H, W) -> (N, c, h, w) as ``encode``; videos (N, C, F, H, W) -> (N, c, F, h, w), every frame
    encoded as an image (Latte's use of an image VAE)."""
    if x.dim() != 5:
        return autoencoder.encode(x, sample=sample, generator=generator)
    n, c, f, h, w = x.shape
    z = autoencoder.encode(x.transpose(1, 2).reshape(n * f, c, h, w), sample=sample, generator=generator)
    return z.reshape(n, f, *z.shape[1:]).transpose(1, 2)  # (N, c, F, h, w)


class PixelAutoencoder(Autoencoder):
    """Identity autoencoder: the diffusion model works on the pixels themselves."""

    def __init__(self, channels: int = 3):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.image_channels = channels
        self.latent_channels = channels
        self.downsample = 1
        self.scaling_factor = 1.0

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return images.clone()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)

    def identity(self) -> str:
        return f"pixel-{self.image_channels}ch"

    def extra_repr(self) -> str:
        return f"channels={self.image_channels}"

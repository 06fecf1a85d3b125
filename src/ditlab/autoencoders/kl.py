"""ditlab's own small KL-regularised autoencoder (the VAE of latent diffusion, Rombach et al. 2022).

Encoder: conv -> [residual blocks, strided-conv downsample] per level -> GroupNorm, SiLU, conv to
the mean and log-variance of a diagonal Gaussian posterior. Decoder: the mirror image with
nearest-neighbour upsampling. Each halving of resolution is one level, so ``downsample`` is 1, 2, 4
or 8. Saved as ``config.json`` + ``model.safetensors``; loading reads safetensors only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ditlab.autoencoders.base import Autoencoder
from ditlab.errors import CheckpointError
from ditlab.files import atomic_write, atomic_write_json

CONFIG_TYPE = "ditlab-kl-vae"
DOWNSAMPLE_FACTORS = (1, 2, 4, 8)


@dataclasses.dataclass
class KLAutoencoderConfig:
    """Geometry of a :class:`KLAutoencoder`; ``channels[i]`` is the width at level ``i``."""

    image_channels: int = 1
    latent_channels: int = 4
    downsample: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int | tuple[int, ...] = 1  # encoder, per level (an int: the same at every level)
    scaling_factor: float = 1.0
    # Resampling: 2x2 stride-2 convolutions down and 2x2 stride-2 transposed convolutions up (cheap,
    # each output pixel seen once) instead of 3x3 stride-2 conv / nearest upsample + 3x3 conv.
    patch_resample: bool = False
    # Decoder residual blocks per level; None = as the encoder. The decoder can use more: its
    # quality is what samples show, while the encoder also runs over the whole dataset once.
    decoder_res_blocks: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.num_res_blocks = self._per_level(self.num_res_blocks)
        if self.decoder_res_blocks is None:
            self.decoder_res_blocks = self.num_res_blocks
        self.decoder_res_blocks = self._per_level(self.decoder_res_blocks)
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_FACTORS}, got {self.downsample}")
        levels = int(math.log2(self.downsample)) + 1
        if len(self.channels) != levels:
            raise ValueError(f"downsample {self.downsample} needs {levels} channel widths, got {self.channels}")
        if len(self.num_res_blocks) != levels or len(self.decoder_res_blocks) != levels:
            raise ValueError(
                f"residual block counts need one entry per level ({levels}), got {self.num_res_blocks} "
                f"and {self.decoder_res_blocks}"
            )

    def _per_level(self, blocks: int | tuple[int, ...]) -> tuple[int, ...]:
        return (int(blocks),) * len(self.channels) if isinstance(blocks, int) else tuple(int(n) for n in blocks)

    @classmethod
    def default(cls, image_channels: int, latent_channels: int, downsample: int) -> KLAutoencoderConfig:
        """The architecture ``train-vae`` uses, chosen by measurement on MNIST (32 px, f4c4) under a
        CPU budget: narrow at full resolution, where every convolution costs the most; 2x2 patch
        resampling; a light encoder (it also encodes the whole dataset once) and the residual
        blocks in the decoder, whose quality the samples show."""
        if downsample not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_FACTORS}, got {downsample}")
        levels = int(math.log2(downsample)) + 1
        if levels == 1:
            return cls(image_channels, latent_channels, 1, (32,), (0,), decoder_res_blocks=(2,))
        widths = (16, 32, 64, 64)[:levels]
        decoder = (0,) + (1,) * (levels - 2) + (2,)  # (0, 2), (0, 1, 2), (0, 1, 1, 2)
        return cls(image_channels, latent_channels, downsample, widths, (0,) * levels,
                   patch_resample=True, decoder_res_blocks=decoder)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.image_channels, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, c in enumerate(ch):
            # Entering every level after the first: a strided conv halves H, W and sets the width.
            blocks: list[nn.Module] = []
            if i > 0 and cfg.patch_resample:
                blocks.append(nn.Conv2d(ch[i - 1], c, 2, stride=2))
            elif i > 0:
                blocks.append(nn.Conv2d(ch[i - 1], c, 3, stride=2, padding=1))
            blocks += [ResBlock(c, c) for _ in range(cfg.num_res_blocks[i])]
            self.levels.append(nn.Sequential(*blocks))
        self.mid = ResBlock(ch[-1], ch[-1])
        self.norm_out = _norm(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (N, ch0, H, W)
        for level in self.levels:
            h = level(h)  # (N, ch_i, H / 2^i, W / 2^i)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 2c, H/d, W/d): mean, log-variance


class Decoder(nn.Module):
    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid = ResBlock(ch[-1], ch[-1])
        self.levels = nn.ModuleList()
        for i in reversed(range(len(ch))):
            blocks: list[nn.Module] = [ResBlock(ch[i], ch[i]) for _ in range(cfg.decoder_res_blocks[i])]
            # Leaving every level but the full-resolution one: double H, W and set the width.
            if i > 0 and cfg.patch_resample:
                blocks.append(nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2))
            elif i > 0:
                blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch[i], ch[i - 1], 3, padding=1)]
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = _norm(ch[0])
        self.conv_out = nn.Conv2d(ch[0], cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (N, ch_last, h, w)
        for level in self.levels:
            h = level(h)  # doubles H, W until full resolution
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, C, H, W)


class KLAutoencoder(Autoencoder):
    """A trainable VAE. ``forward`` is the training pass; ``encode``/``decode`` the no-grad interface."""

    def __init__(self, config: KLAutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # Per-channel mean of the latents, measured on the data with the scaling factor and
        # subtracted by ``encode``, so that the diffusion model sees centred latents.
        self.register_buffer("latent_shift", torch.zeros(config.latent_channels))

    # -- geometry ------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:  # type: ignore[override]
        return self.config.latent_channels

    @property
    def downsample(self) -> int:  # type: ignore[override]
        return self.config.downsample

    @property
    def image_channels(self) -> int:  # type: ignore[override]
        return self.config.image_channels

    @property
    def scaling_factor(self) -> float:  # type: ignore[override]
        return self.config.scaling_factor

    @scaling_factor.setter
    def scaling_factor(self, value: float) -> None:
        self.config.scaling_factor = float(value)

    # -- training-side pieces ------------------------------------------------------------------
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior mean and log-variance, each (N, c, H/d, W/d)."""
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: reconstruction from a posterior sample, plus the posterior's parameters."""
        mean, logvar = self.posterior(images)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * noise  # reparameterisation trick
        return self.decoder(z), mean, logvar

    # -- interface -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        mean, logvar = self.posterior(images)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + (0.5 * logvar).exp() * noise
        return (mean - self.latent_shift.view(1, -1, 1, 1)) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.scaling_factor + self.latent_shift.view(1, -1, 1, 1).to(latents.dtype)
        return self.decoder(z).clamp(-1.0, 1.0)

    def identity(self) -> str:
        """``kl-vae-f{d}c{c}-`` + 12 hex digits of a hash over the weights and the scaling factor.

        Recomputed on every call (a few milliseconds), so in-place weight updates are never missed.
        """
        h = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        h.update(repr(float(self.scaling_factor)).encode())
        return f"kl-vae-f{self.downsample}c{self.latent_channels}-{h.hexdigest()[:12]}"

    # -- files ---------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``out_dir``, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # Over an older autoencoder: drop its config first, so that a crash between the two renames
        # leaves a folder that refuses to load rather than new weights under an old config.
        (out / "config.json").unlink(missing_ok=True)
        atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        cfg = dataclasses.asdict(self.config)
        cfg["channels"] = list(cfg["channels"])
        cfg["num_res_blocks"] = list(cfg["num_res_blocks"])
        cfg["decoder_res_blocks"] = list(cfg["decoder_res_blocks"])
        # latent_shift lives in the weights file; config.json repeats it for people reading it.
        cfg = {"type": CONFIG_TYPE, "version": 1, **cfg,
               "latent_shift": [round(v, 6) for v in self.latent_shift.tolist()], "identity": self.identity()}
        atomic_write_json(out / "config.json", cfg)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> KLAutoencoder:
        """Load a directory written by :meth:`save` (safetensors only, nothing unpickled)."""
        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.exists() or not weights.exists():
            raise CheckpointError(
                f"{path} is not a ditlab autoencoder (needs config.json and model.safetensors): "
                "train one with `ditlab train-vae DATA --out DIR`"
            )
        try:
            raw = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {cfg_file} ({err}): retrain with `ditlab train-vae`") from err
        if raw.get("type") != CONFIG_TYPE:
            raise CheckpointError(
                f"{cfg_file} is not a ditlab KL-VAE config: pass a directory written by `ditlab train-vae`"
            )
        fields = {f.name for f in dataclasses.fields(KLAutoencoderConfig)}
        try:
            config = KLAutoencoderConfig(**{k: v for k, v in raw.items() if k in fields})
            model = cls(config)
            state = load_file(str(weights))
            # Files written before the latent shift existed hold no shift: it was zero.
            state.setdefault("latent_shift", torch.zeros(config.latent_channels))
            model.load_state_dict(state)
        except Exception as err:  # wrong shapes, bad header, truncated file
            raise CheckpointError(
                f"autoencoder weights in {path} do not load ({type(err).__name__}): retrain with `ditlab train-vae`"
            ) from err
        return model.eval()

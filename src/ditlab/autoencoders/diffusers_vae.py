"""diffusers' ``AutoencoderKL`` (the Stable Diffusion VAE) behind ditlab's autoencoder interface.

DiT trains in the latent space of SD's KL-f8 VAE (Peebles & Xie 2023, sec. 3.1): a 256x256 RGB
image becomes a 4x32x32 latent, multiplied by the VAE's ``scaling_factor`` (0.18215 for SD-VAE) so
that the latents have roughly unit variance. This module loads such a VAE from a local directory
(``save_pretrained`` layout: ``config.json`` + weights) or from a hub id already present in the
local Hugging Face cache; nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ditlab.autoencoders.base import Autoencoder
from ditlab.errors import CheckpointError, UserError

# Short names for the two VAEs the DiT paper used; anything of the form "org/name" is tried too.
HUB_ALIASES = {
    "sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema",
    "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)?$")
# Config keys that describe how a file was written, not the network it describes.
_VOLATILE_CONFIG_KEYS = ("_diffusers_version", "_name_or_path", "_use_default_values")


def is_diffusers_vae_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory whose ``config.json`` names ``AutoencoderKL``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (OSError, ValueError, AttributeError):
        return False


def is_hub_id(spec: str) -> bool:
    """True when ``spec`` reads as a hub id (an alias, ``org/name`` or ``org/name/subfolder``)."""
    return spec in HUB_ALIASES or (_HUB_ID.match(spec) is not None and not Path(spec).exists())


def resolve_diffusers_vae(spec: str | os.PathLike) -> Path:
    """The local directory holding the VAE named by ``spec`` (a path or a cached hub id).

    Raises:
        CheckpointError: the path does not exist, is not an AutoencoderKL, or the hub id is not in
            the local cache (the message says how to download it).
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"autoencoder {spec} is a file, not a diffusers directory; pass the folder that "
                "holds config.json and diffusion_pytorch_model.safetensors"
            )
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"autoencoder directory {spec} has no config.json; pass a folder written by "
                "AutoencoderKL.save_pretrained (config.json + weights)"
            )
        if not is_diffusers_vae_dir(path):
            raise CheckpointError(
                f"autoencoder directory {spec} does not hold an AutoencoderKL (config.json "
                "'_class_name' differs); pass a diffusers AutoencoderKL folder or a ditlab VAE"
            )
        return path
    if not is_hub_id(spec):
        raise CheckpointError(
            f"autoencoder {spec} not found; pass an existing directory or a hub id such as "
            "stabilityai/sd-vae-ft-ema"
        )
    return _resolve_hub_id(spec)


def _resolve_hub_id(spec: str) -> Path:
    """Find a hub id in the local Hugging Face cache, offline."""
    full = HUB_ALIASES.get(spec, spec)
    parts = full.split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    how = (
        f"download it on a connected machine with `huggingface-cli download {repo_id}` (then copy "
        "the Hugging Face cache here) or pass the local path of a saved AutoencoderKL"
    )
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        raise UserError(f"autoencoder {spec} is a hub id but huggingface_hub is missing; {how}") from None
    config_name = f"{subfolder}/config.json" if subfolder else "config.json"
    found = try_to_load_from_cache(repo_id, config_name)
    if not isinstance(found, str):
        raise CheckpointError(f"autoencoder {full} is not in the local Hugging Face cache; {how}")
    folder = Path(found).parent
    if not is_diffusers_vae_dir(folder):
        raise CheckpointError(
            f"hub model {full} is not an AutoencoderKL; pass e.g. stabilityai/sd-vae-ft-ema"
        )
    return folder


class DiffusersVAE(Autoencoder):
    """A diffusers ``AutoencoderKL`` with ditlab's autoencoder interface.

    ``encode`` maps images in [-1, 1], shape (N, 3, H, W), to scaled latents
    ``(z - shift_factor) * scaling_factor`` of shape (N, C, H/f, W/f); ``decode`` inverts the
    scaling and returns images in [-1, 1]. Both run without gradients.
    """

    def __init__(self, vae: nn.Module, source: str = ""):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.source = source
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        # SD3/FLUX-style VAEs also shift the latents; SD-VAE has none (None in its config).
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.image_channels = int(config.in_channels)
        # Each encoder block but the last halves the resolution.
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self._identity: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents of ``images`` (N, 3, H, W) in [-1, 1] -> (N, C, H/f, W/f), float32.

        ``sample=False`` takes the posterior mean (what fast-DiT caches); ``sample=True`` draws
        ``mean + std * eps`` as the official DiT training loop does, with ``generator`` when given.
        """
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise ValueError(
                f"expected images of shape (N, {self.image_channels}, H, W), got {tuple(images.shape)}"
            )
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {self.downsample}")
        x = images.to(self.device, self.dtype)
        posterior = self.vae.encode(x).latent_dist
        if sample:
            eps = torch.randn(
                posterior.mean.shape, generator=generator, device=posterior.mean.device,
                dtype=posterior.mean.dtype,
            )
            z = posterior.mean + posterior.std * eps  # (N, C, h, w)
        else:
            z = posterior.mean  # (N, C, h, w)
        return ((z.float() - self.shift_factor) * self.scaling_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (N, 3, h*f, w*f), from scaled latents (N, C, h, w); float32."""
        z = latents.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        images = self.vae.decode(z.to(self.dtype)).sample  # (N, 3, H, W)
        return images.float().clamp(-1.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(images))

    def identity(self) -> str:
        """``AutoencoderKL:<hash>`` over the config and the weights (as float32), so two caches
        or runs agree on an autoencoder exactly when the network is the same, whatever its path,
        device or dtype."""
        if self._identity is None:
            h = hashlib.sha256()
            config = {k: v for k, v in dict(self.vae.config).items() if k not in _VOLATILE_CONFIG_KEYS}
            h.update(json.dumps(config, sort_keys=True, default=str).encode())
            for name, tensor in sorted(self.vae.state_dict().items()):
                t = tensor.detach().to("cpu", torch.float32).contiguous()
                h.update(f"{name}:{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
            self._identity = f"AutoencoderKL:{h.hexdigest()[:16]}"
        return self._identity

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, latent_channels={self.latent_channels}, "
            f"downsample={self.downsample}, scaling_factor={self.scaling_factor}"
        )


def load_diffusers_vae(
    spec: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusersVAE:
    """Load an ``AutoencoderKL`` from a local directory or a locally cached hub id.

    Args:
        spec: a directory written by ``AutoencoderKL.save_pretrained``, or ``sd-vae-ft-ema``,
            ``sd-vae-ft-mse``, ``org/name`` or ``org/name/subfolder`` found in the local
            Hugging Face cache (never downloaded).
        device: where the network runs.
        dtype: the network's parameter dtype; ``encode``/``decode`` return float32 regardless.

    Raises:
        CheckpointError: missing path, not an AutoencoderKL, hub id not cached, unreadable weights.
    """
    folder = resolve_diffusers_vae(spec)
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UserError(
            "loading a diffusers AutoencoderKL needs the diffusers package; "
            "pip install 'ditlab[diffusers]'"
        ) from None
    try:
        # Without accelerate, diffusers warns and falls back to a plain load; ask for that directly.
        fast = importlib.util.find_spec("accelerate") is not None
        vae = AutoencoderKL.from_pretrained(
            str(folder), local_files_only=True, low_cpu_mem_usage=fast
        )
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot load AutoencoderKL from {folder} ({first[:200]}); check that the folder holds "
            "config.json and diffusion_pytorch_model.safetensors from save_pretrained"
        ) from err
    adapter = DiffusersVAE(vae, source=str(spec))
    if dtype != torch.float32:
        adapter.identity()  # hash the weights as stored, before rounding them to ``dtype``
    return adapter.to(device=device, dtype=dtype)

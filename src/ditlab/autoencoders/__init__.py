"""ditlab.autoencoders: the latent space.

``load_autoencoder(spec)`` returns an object with ``encode(images) -> latents`` (already multiplied
by ``scaling_factor``), ``decode(latents) -> images`` in [-1, 1], ``latent_channels``,
``downsample``, ``scaling_factor``, ``image_channels`` and ``identity()``. ``spec`` is ``"pixel"``
(train in pixel space), a directory written by ``ditlab train-vae`` / :func:`train_autoencoder`, or a
diffusers ``AutoencoderKL`` (a local directory or an SD-VAE hub id found in the local cache).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ditlab.autoencoders.base import Autoencoder, PixelAutoencoder, encode_frames
from ditlab.autoencoders.kl import CONFIG_TYPE, KLAutoencoder, KLAutoencoderConfig
from ditlab.autoencoders.train import measure_latent_std, train_autoencoder
from ditlab.errors import CheckpointError, ModelError

__all__ = [
    "Autoencoder",
    "KLAutoencoder",
    "KLAutoencoderConfig",
    "PixelAutoencoder",
    "encode_frames",
    "load_autoencoder",
    "measure_latent_std",
    "train_autoencoder",
]

# Names that mean "the Stable Diffusion VAE from diffusers", resolved offline by diffusers_vae.
SD_VAE_NAMES = ("sd-vae-ft-ema", "sd-vae-ft-mse")


def _is_diffusers_spec(spec: str) -> bool:
    return spec in SD_VAE_NAMES or spec.startswith("stabilityai/")


def _load_diffusers(spec: str):
    try:
        from ditlab.autoencoders.diffusers_vae import load_diffusers_vae
    except ImportError as err:
        raise ModelError(
            f"autoencoder {spec!r} is a diffusers AutoencoderKL, but its adapter could not be imported ({err}): "
            "install the extra with `pip install 'ditlab[diffusers]'`"
        ) from err
    return load_diffusers_vae(spec)


def load_autoencoder(spec: str | os.PathLike, *, channels: int | None = None) -> Autoencoder:
    """Load an autoencoder by spec (see module docstring).

    Args:
        spec: ``"pixel"``, a ditlab VAE directory, a diffusers AutoencoderKL directory, or one of
            ``"sd-vae-ft-ema"``, ``"sd-vae-ft-mse"``, ``"stabilityai/..."``.
        channels: image channels of the data; sets the pixel autoencoder's channels and is checked
            against the loaded autoencoder's.
    """
    text = os.fspath(spec)
    if text == "pixel":
        ae = PixelAutoencoder(3 if channels is None else channels)
    else:
        path = Path(text).expanduser()
        config = path / "config.json"
        if path.is_dir() and config.is_file():
            try:
                raw = json.loads(config.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(
                    f"cannot read {config} ({err}): pass a directory written by `ditlab train-vae`"
                ) from err
            kind = raw.get("_class_name") or raw.get("type")
            if kind == "AutoencoderKL":
                ae = _load_diffusers(text)
            elif kind == CONFIG_TYPE:
                ae = KLAutoencoder.load(path)
            else:
                raise CheckpointError(
                    f"{path} holds no autoencoder (config.json type {kind!r}): pass 'pixel', a directory "
                    "written by `ditlab train-vae`, or a diffusers AutoencoderKL directory"
                )
        elif _is_diffusers_spec(text):
            ae = _load_diffusers(text)
        elif path.is_dir():
            raise CheckpointError(
                f"{path} has no config.json, so it is no autoencoder: pass 'pixel' or a directory written by "
                "`ditlab train-vae`"
            )
        else:
            raise CheckpointError(
                f"autoencoder {text!r} not found: pass 'pixel', a directory written by `ditlab train-vae`, "
                f"a diffusers AutoencoderKL directory, or one of {', '.join(SD_VAE_NAMES)}"
            )
    if channels is not None and ae.image_channels != channels:
        raise ModelError(
            f"autoencoder {text!r} takes {ae.image_channels}-channel images but the data has {channels}: "
            f"train a matching one with `ditlab train-vae` or convert the data to {ae.image_channels} channels"
        )
    return ae

"""Build the pieces of a run from its config: data, autoencoder, latents, model, process.

``prepare_training`` is what ``ditlab train`` calls; ``load_run`` rebuilds a trained run for sampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditlab.config import TrainConfig, load_config
from ditlab.errors import CheckpointError, ConfigError, UserError
from ditlab.training.checkpoint import latest_checkpoint, load_weights, read_meta

AUTOENCODER_DIR = "autoencoder"
LATENTS_FILE = "latents.safetensors"


def pick_device(spec: str) -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' asked for but CUDA is not available: use --device cpu")
    return device


def build_process(config: TrainConfig):
    """The generative process named by the config (ddpm or flow)."""
    from ditlab.diffusion import create_process

    if config.process == "ddpm":
        return create_process(
            "ddpm",
            schedule=config.schedule,
            num_timesteps=config.num_timesteps,
            prediction=config.prediction,
            learn_sigma=config.learn_sigma,
        )
    return create_process("flow", time_sampling=config.time_sampling, shift=config.shift)


def build_model(config: TrainConfig, latent_shape: tuple[int, int, int], num_classes: int, process) -> nn.Module:
    """The DiT for latents of shape (C, H, W), with the output channels the process needs."""
    from ditlab.models import create_model

    overrides: dict[str, Any] = {}
    for key in ("depth", "hidden_size", "num_heads", "patch_size"):
        value = getattr(config, key)
        if value is not None:
            overrides[key] = value
    c, h, w = latent_shape
    return create_model(
        config.model,
        input_size=(h, w),
        in_channels=c,
        num_classes=num_classes,
        learn_sigma=process.learn_sigma,
        class_dropout_prob=config.class_dropout_prob,
        block=config.block,
        qk_norm=config.qk_norm,
        grad_checkpointing=config.grad_checkpointing,
        timestep_scale=1000.0 if process.kind == "flow" else 1.0,
        **overrides,
    )


def build_or_load_autoencoder(config: TrainConfig, dataset, run_dir: Path, device: torch.device, log=print):
    """``pixel``, a saved autoencoder (path or hub id), or ``auto``: ditlab's KL-VAE trained on this data
    once and kept in ``RUN_DIR/autoencoder`` (reused on resume)."""
    from ditlab.autoencoders import load_autoencoder, train_autoencoder

    channels = getattr(dataset, "channels", None)
    if config.autoencoder != "auto":
        return load_autoencoder(config.autoencoder, channels=channels)
    target = run_dir / AUTOENCODER_DIR
    if (target / "config.json").is_file():
        log(f"autoencoder: reusing {target}")
        return load_autoencoder(str(target), channels=channels)
    log(
        f"autoencoder: training ditlab's KL-VAE (downsample {config.vae_downsample}, "
        f"{config.vae_latent_channels} latent channels, {config.vae_steps} steps) -> {target}"
    )
    return train_autoencoder(
        dataset,
        target,
        downsample=config.vae_downsample,
        latent_channels=config.vae_latent_channels,
        steps=config.vae_steps,
        batch_size=config.vae_batch_size,
        lr=config.vae_lr,
        kl_weight=config.vae_kl_weight,
        seed=config.seed,
        progress=True,
        device=device,
    )


@torch.no_grad()
def encode_in_memory(autoencoder, images_uint8: torch.Tensor, device: torch.device, batch_size: int = 500,
                     sample: bool = False) -> torch.Tensor:
    """Encode a whole uint8 (N, C, H, W) tensor to latents (N, c, h, w), batch by batch, on ``device``."""
    out = []
    for start in range(0, images_uint8.shape[0], batch_size):
        chunk = images_uint8[start : start + batch_size].to(device).float() / 127.5 - 1.0  # [-1, 1]
        out.append(autoencoder.encode(chunk, sample=sample).float().cpu())
    return torch.cat(out)


def cached_latents(config: TrainConfig, dataset, autoencoder, run_dir: Path, device: torch.device, log=print):
    """Latents of an in-memory (built-in) dataset, encoded once into ``RUN_DIR/latents.safetensors``."""
    from safetensors.torch import load_file, save_file

    path = run_dir / LATENTS_FILE
    identity = autoencoder.identity()
    if path.is_file():
        try:
            data = load_file(str(path))
            stored = bytes(data["identity"].tolist()).decode()
            if stored == identity:
                return data["latents"], data["labels"]
        except Exception:
            pass  # damaged or stale cache: encode again below
        log("latent cache does not match the autoencoder: encoding again")
    images, labels = dataset.tensors()
    log(f"encoding {images.shape[0]} images to latents once (cached in {path}) ...")
    latents = encode_in_memory(autoencoder, images, device, sample=config.vae_sample_posterior)
    tmp = path.with_suffix(".tmp")
    save_file(
        {
            "latents": latents.contiguous(),
            "labels": labels.contiguous(),
            "identity": torch.tensor(list(identity.encode()), dtype=torch.uint8),
        },
        str(tmp),
    )
    tmp.replace(path)
    return latents, labels


@dataclass
class LoadedRun:
    """A trained run, ready to sample from."""

    config: TrainConfig
    model: nn.Module  # the EMA weights unless asked otherwise
    process: Any
    autoencoder: Any
    num_classes: int
    latent_shape: tuple[int, int, int]
    step: int
    checkpoint: Path


def load_run(run_dir: str | Path, *, use_ema: bool = True, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild model, process and autoencoder of a run directory from its latest checkpoint."""
    from ditlab.autoencoders import load_autoencoder
    from ditlab.models import model_from_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist: pass the folder `ditlab train` wrote")
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"'{run_dir}' has no config.json: it is not a ditlab run directory")
    config = load_config(run_dir / "config.json")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"run '{run_dir}' has no checkpoint yet: train it first (ditlab train ...)")
    meta = read_meta(ckpt)
    try:
        model = model_from_config(meta["model"])
    except (KeyError, TypeError, UserError) as err:
        raise CheckpointError(f"checkpoint '{ckpt}' has no usable model config ({err}): retrain") from None
    weights = load_weights(ckpt / ("ema.safetensors" if use_ema else "model.safetensors"))
    missing, unexpected = _key_diff(model, weights)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{ckpt}' does not fit its model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            f"it belongs to another model"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError(
            f"checkpoint '{ckpt}' has tensors of another shape: it belongs to another model"
        ) from None
    device = torch.device(device)
    model.to(device).eval()
    process = build_process(config)
    ae_spec = str(run_dir / AUTOENCODER_DIR) if config.autoencoder == "auto" else config.autoencoder
    autoencoder = load_autoencoder(ae_spec, channels=meta.get("image_channels"))
    autoencoder.to(device)
    return LoadedRun(
        config=config,
        model=model,
        process=process,
        autoencoder=autoencoder,
        num_classes=int(meta.get("num_classes", 0)),
        latent_shape=tuple(meta["latent_shape"]),
        step=int(meta["step"]),
        checkpoint=ckpt,
    )


def _key_diff(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    got = set(weights)
    return sorted(expected - got), sorted(got - expected)


"""Build the pieces of a run from its config: process, data + condition + batch source, autoencoder, model.

``ditlab.training.run.build_run`` assembles them; sampling a finished run goes through
``ditlab.sampling.Pipeline.from_run``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditlab.conditioning import Condition, Records, condition_for_dataset
from ditlab.config import FIELDS, TrainConfig, parse_class_factors
from ditlab.errors import ConfigError, UserError
from ditlab.files import atomic_write
from ditlab.models.designs import check_condition
from ditlab.sampling.loading import RUN_AUTOENCODER_DIR, RUN_CONDITION_DIR
from ditlab.training.distributed import DistInfo, barrier

AUTOENCODER_DIR = RUN_AUTOENCODER_DIR
CONDITION_DIR = RUN_CONDITION_DIR
LATENTS_FILE = "latents.safetensors"


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
    return create_process("flow", time_sampling=config.time_sampling, shift=config.shift, shift_base=config.shift_base)


def model_block(config: TrainConfig) -> str:
    """The design a run trains: ``--block``, except that a registered design model (MMDiT-*, U-ViT-*,
    SD3-medium) keeps its own when ``--block`` is left at its default (DiT's)."""
    from ditlab.models.designs import DESIGN_MODELS

    if config.model in DESIGN_MODELS and config.block == FIELDS["block"].default:
        return DESIGN_MODELS[config.model]["block"]
    return config.block


def model_patch_size(config: TrainConfig) -> int:
    """The patch size of the run's model (``--patch_size`` or the registered model's)."""
    from ditlab.models.config import config_for

    return config.patch_size or config_for(config.model).patch_size


def build_model(config: TrainConfig, latent_shape: tuple[int, ...], condition: Condition, process) -> nn.Module:
    """The network for latents of shape (C, H, W) (the default size of a bucketed run; a video DiT for
    (C, F, H, W)), with the output channels the process needs and the embedders the condition needs."""
    from ditlab.models import create_model

    overrides: dict[str, Any] = {}
    for key in ("depth", "hidden_size", "num_heads", "patch_size"):
        value = getattr(config, key)
        if value is not None:
            overrides[key] = value
    if config.class_factors.strip():
        overrides["class_factors"] = parse_class_factors(config.class_factors)
    if len(latent_shape) == 4:  # a clip: (C, F, h, w)
        overrides.update(num_frames=latent_shape[1], layout=config.video_layout,
                         temporal_patch_size=config.temporal_patch_size)
    c, h, w = latent_shape[0], latent_shape[-2], latent_shape[-1]
    return create_model(
        config.model,
        input_size=(h, w),
        in_channels=c,
        learn_sigma=process.learn_sigma,
        block=model_block(config),
        qk_norm=config.qk_norm,
        pos_embed=config.pos_embed,
        pos_scale=config.pos_scale,
        pos_base_size=h // model_patch_size(config) if config.pos_interpolate else None,
        grad_checkpointing=config.grad_checkpointing,
        timestep_scale=1000.0 if process.kind == "flow" else 1.0,
        **condition.model_fields(),
        **overrides,
    )


def build_or_load_autoencoder(config: TrainConfig, dataset, run_dir: Path, device: torch.device, log=print):
    """``pixel``, a saved autoencoder (path or hub id), or ``auto``: ditlab's KL-VAE trained on this data
    once and kept in ``RUN_DIR/autoencoder`` (reused on resume)."""
    from ditlab.autoencoders import load_autoencoder, train_autoencoder
    from ditlab.data import is_video_dataset, video_frames

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
        video_frames(dataset) if is_video_dataset(dataset) else dataset,  # an image VAE, scaled on frames
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
        cuda_graphs=config.cuda_graphs,  # opt-in
    )


def autoencoder_spec(config: TrainConfig) -> str:
    """How sampling finds the run's autoencoder again: ``autoencoder`` (the run's own folder), or the
    spec given, made absolute when it is a local path (the run may be sampled from another directory)."""
    if config.autoencoder == "auto":
        return AUTOENCODER_DIR
    path = Path(config.autoencoder).expanduser()
    return str(path.absolute()) if config.autoencoder != "pixel" and path.exists() else config.autoencoder


@torch.no_grad()
def encode_in_memory(autoencoder, images_uint8: torch.Tensor, device: torch.device, batch_size: int = 500,
                     sample: bool = False) -> torch.Tensor:
    """Encode a whole uint8 (N, C, H, W) tensor to latents (N, c, h, w), batch by batch, on ``device``;
    videos (N, C, F, H, W) frame by frame to (N, c, F, h, w), ``batch_size`` frames at a time."""
    from ditlab.autoencoders import encode_frames

    step = max(1, batch_size // images_uint8.shape[2]) if images_uint8.dim() == 5 else batch_size
    out = []
    for start in range(0, images_uint8.shape[0], step):
        chunk = images_uint8[start : start + step].to(device).float() / 127.5 - 1.0  # [-1, 1]
        out.append(encode_frames(autoencoder, chunk, sample=sample).float().cpu())
    return torch.cat(out)


def cached_latents(config: TrainConfig, dataset, autoencoder, run_dir: Path, device: torch.device,
                   log=print) -> torch.Tensor:
    """Latents of an in-memory (built-in) dataset, encoded once into ``RUN_DIR/latents.safetensors``."""
    from safetensors.torch import load_file, save_file

    path = run_dir / LATENTS_FILE
    identity = autoencoder.identity()
    if path.is_file():
        try:
            data = load_file(str(path))
            if bytes(data["identity"].tolist()).decode() == identity:
                return data["latents"]
        except Exception:
            pass  # damaged or stale cache: encode again below
        log("latent cache does not match the autoencoder: encoding again")
    images, _ = dataset.tensors()
    what = f"{images.shape[0]} videos of {images.shape[2]} frames" if images.dim() == 5 else f"{images.shape[0]} images"
    log(f"encoding {what} to latents once (cached in {path}) ...")
    latents = encode_in_memory(autoencoder, images, device, sample=config.vae_sample_posterior)
    tensors = {"latents": latents.contiguous(), "identity": torch.tensor(list(identity.encode()), dtype=torch.uint8)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return latents


@dataclass
class RunData:
    """What the data side of a run provides."""

    source: Any  # a batch source of ditlab.training.data_source: next() -> (latents, records)
    autoencoder: Any
    condition: Condition
    latent_shape: tuple[int, ...]
    image_channels: int
    autoencoder_spec: str
    dataset: Any = None  # None when training from a latent cache
    buckets: list[tuple[int, int]] | None = None  # aspect-ratio buckets (H, W) in pixels, default size first


def build_data(config: TrainConfig, run_dir: Path, info: DistInfo, local_batch: int, device: torch.device,
               log) -> RunData:
    """Dataset or latent cache -> condition, its records, autoencoder and the resumable batch source."""
    if config.latents:
        return _cache_data(config, info, local_batch, device)
    from ditlab.autoencoders import encode_frames
    from ditlab.data import VIDEO_BUILTINS, build_dataset
    from ditlab.training.data_source import BatchOrder, FolderSource, InMemorySource

    if config.flip and config.data in VIDEO_BUILTINS:
        raise ConfigError("moving digits cannot be flipped (a mirrored digit is no digit, and left would become "
                          "right): drop --flip")
    dataset = build_dataset(config.data, config.image_size, flip=False, **video_options(config))
    frames = int(getattr(dataset, "num_frames", 0) or 0)
    if frames % config.temporal_patch_size:  # before an autoencoder trains for a model that cannot be built
        raise ConfigError(f"{frames} frames are not divisible by the temporal patch size {config.temporal_patch_size}:"
                          f" pass --num_frames with a multiple of it")
    if hasattr(dataset, "report"):  # e.g. captions: how many images have none
        log(dataset.report())
    bucketed = _bucketed(config, dataset)  # before anything is trained or written: sizes, then the condition

    def condition_of_data() -> Condition:  # text: each distinct caption encoded once into RUN_DIR/condition
        return condition_for_dataset(dataset, config.condition, text_encoder=config.text_encoder,
                                     text_max_length=config.text_max_length, text_null=config.text_null,
                                     text_standardize=config.text_standardize, root=run_dir / CONDITION_DIR,
                                     device=device, log=log)

    condition = _main_first(info, condition_of_data)  # the others read the features rank 0 encoded
    check_condition(model_block(config), condition.model_fields())
    records = condition.records(dataset.metas())
    autoencoder = _main_first(info, lambda: build_or_load_autoencoder(config, dataset, run_dir, device, log=log))
    autoencoder.to(device)
    order = BatchOrder(len(dataset), config.global_batch_size, config.seed)
    if hasattr(dataset, "tensors"):  # built-in digits: no flips unless asked (a flipped 3 is no 3)
        latents = _main_first(info, lambda: cached_latents(config, dataset, autoencoder, run_dir, device, log=log))
        source = InMemorySource(latents, records, order, info.rank, local_batch, device, flip=bool(config.flip))
        latent_shape = tuple(latents.shape[1:])
    elif bucketed is not None:
        from ditlab.data.buckets import check_buckets
        from ditlab.training.buckets import BucketBatchOrder

        check_buckets(bucketed.buckets, model_patch_size(config) * autoencoder.downsample)  # a loaded autoencoder
        order = BucketBatchOrder(bucketed.assignment, bucketed.buckets, config.global_batch_size, config.seed)
        if order.unused:
            log(f"warning: buckets {order.unused} hold fewer images than a global batch and are never drawn")
        flip = True if config.flip is None else config.flip
        source = FolderSource(bucketed, records, autoencoder, order, info.rank, local_batch, device,
                              config.num_workers, flip, config.vae_sample_posterior)
        with torch.no_grad():
            probe = autoencoder.encode(dataset_probe(dataset).to(device))  # the latent channels and downsampling
        (height, width), down = bucketed.buckets[0], autoencoder.downsample
        latent_shape = (probe.shape[1], height // down, width // down)  # the default (most square) bucket
    else:
        flip = True if config.flip is None else config.flip  # folders: flips on by default (ADM, DiT)
        source = FolderSource(dataset, records, autoencoder, order, info.rank, local_batch, device,
                              config.num_workers, flip, config.vae_sample_posterior)
        with torch.no_grad():
            probe = encode_frames(autoencoder, dataset_probe(dataset).to(device))
        latent_shape = tuple(probe.shape[1:])
    return RunData(source, autoencoder, condition, latent_shape, int(getattr(dataset, "channels", 3)),
                   autoencoder_spec(config), dataset, None if bucketed is None else list(bucketed.buckets))


def _main_first(info: DistInfo, make):
    """``make()`` on rank 0 first (it trains or encodes what the run keeps and writes it), then, after a
    barrier, on the other ranks, which read what rank 0 wrote."""
    if info.is_main:
        value = make()
    barrier(info)
    if not info.is_main:
        value = make()
    return value


def _bucketed(config: TrainConfig, dataset):
    """The bucketed view of an image folder when ``--buckets`` is set (None otherwise); one-line errors for
    built-in data and for sizes that are not whole token grids (patch x the downsampling known so far)."""
    if not config.buckets:
        return None
    from ditlab.data.buckets import bucketed_folder

    if getattr(dataset, "num_frames", 0):
        raise UserError("--buckets is for image folders of mixed sizes, not videos: drop --buckets")
    if hasattr(dataset, "tensors"):
        raise UserError(f"--buckets is for image folders of mixed sizes; '{config.data}' is square built-in data: "
                        "drop --buckets")
    down = {"auto": config.vae_downsample, "pixel": 1}.get(config.autoencoder, 1)  # others: checked once loaded
    return bucketed_folder(config.buckets, config.data, config.image_size, model_patch_size(config) * down)


def video_options(config: TrainConfig) -> dict[str, int | None]:
    """``build_dataset``'s video options from the config (0 = the dataset's default)."""
    return {"num_frames": config.num_frames or None, "frame_stride": config.frame_stride,
            "num_digits": config.num_digits or None, "num_videos": config.num_videos or None}


def _cache_data(config: TrainConfig, info: DistInfo, local_batch: int, device: torch.device) -> RunData:
    """A latent cache: its autoencoder, condition and records; refuses a cache of another autoencoder or size."""
    from ditlab.autoencoders import load_autoencoder
    from ditlab.data.latent_cache import LatentCache
    from ditlab.training.data_source import BatchOrder, CacheSource

    cache = LatentCache.open(config.latents)
    spec = cache.index.autoencoder_source if config.autoencoder == "auto" else config.autoencoder
    autoencoder = load_autoencoder(spec).to(device)
    latent_shape = tuple(cache.index.latent_shape)
    side = config.image_size // autoencoder.downsample
    expected: tuple[int, ...] = (autoencoder.latent_channels, side, side)
    if len(latent_shape) == 4:  # a cache of clips: (C, F, h, w), F as extracted unless --num_frames says otherwise
        expected = (autoencoder.latent_channels, config.num_frames or latent_shape[1], side, side)
    cache.check_compatible(autoencoder.identity(), config.image_size, expected)
    condition = cache.condition(device=device, text_null=config.text_null)
    if config.condition == "none" and condition.kind != "none":
        from ditlab.conditioning import NoCondition

        condition = NoCondition()
    check_condition(model_block(config), condition.model_fields())
    order = BatchOrder(len(cache), config.global_batch_size, config.seed)
    from ditlab.data import VIDEO_BUILTINS

    # moving digits are never mirrored unless asked (a mirrored digit is no digit, and left would become right)
    flip = (cache.index.dataset not in VIDEO_BUILTINS) if config.flip is None else config.flip
    records: Records = cache.records if condition.kind != "none" else {}
    source = CacheSource(cache, records, order, info.rank, local_batch, device, flip=flip)
    return RunData(source, autoencoder, condition, latent_shape, int(autoencoder.image_channels), spec)


def init_from(model: nn.Module, spec: str) -> None:
    """Load an image DiT's weights (``image_weights``) into a fresh video model; its temporal blocks stay
    zero-gated, so it starts as the image model applied frame by frame."""
    from ditlab.models.video import load_image_weights

    if not model.config.is_video:
        raise ConfigError("init_from starts a video model from an image model: it needs video data "
                          "(--data moving-mnist, or a folder with --num_frames N)")
    load_image_weights(model, image_weights(spec))


def image_weights(spec: str) -> dict[str, torch.Tensor]:
    """The weights of an image DiT to start a video run from: a run directory (its latest EMA weights) or a
    model folder (``model.safetensors``)."""
    from ditlab.errors import CheckpointError
    from ditlab.sampling.loading import is_run_dir
    from ditlab.training.checkpoint import latest_checkpoint, load_weights

    path = Path(spec).expanduser()
    if is_run_dir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"--init_from run '{path}' has no checkpoint yet: train it first")
        return load_weights(latest / "ema.safetensors")
    if (path / "model.safetensors").is_file():
        return load_weights(path / "model.safetensors")
    raise CheckpointError(f"--init_from '{path}' is neither a run directory nor a model folder: pass one of those")


def dataset_probe(dataset) -> torch.Tensor:
    """One readable image (clip) of the dataset as a (1, C, H, W) ((1, C, F, H, W)) batch, for the latent shape."""
    for i in range(min(len(dataset), 64)):
        item = dataset[i]
        if item is not None:
            return item[0].unsqueeze(0)
    raise UserError("none of the first 64 images of the dataset can be read: check the data folder")

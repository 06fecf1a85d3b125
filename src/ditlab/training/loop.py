"""The training loop: one code path for one CPU, one GPU, or many under torchrun (DDP).

Rerunning the same command resumes from the newest complete checkpoint with the optimiser, LR schedule,
EMA, RNG states and data position restored, so the continued run is the uninterrupted one.
"""
from __future__ import annotations

import contextlib
import errno
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ditlab.config import TrainConfig, load_config, save_config
from ditlab.errors import CheckpointError, ConfigError, UserError
from ditlab.runlock import lock_folder_on_rank0
from ditlab.training import checkpoint as ckpt
from ditlab.training.data_source import BatchOrder, CacheSource, FolderSource, InMemorySource
from ditlab.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    check_batch_split,
    check_compile_backend,
    check_launch,
    cleanup,
    draw_step,
    drop_labels,
    fsdp_shard,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    launch_world_size,
    load_model_state,
    load_optimizer_state,
    wrap_ddp,
)
from ditlab.training.ema import EMA
from ditlab.training.logger import RunLogger
from ditlab.training.periodic_eval import PeriodicEval
from ditlab.training.setup import (
    build_model,
    build_or_load_autoencoder,
    build_process,
    cached_latents,
    pick_device,
)

# Keys that may change between the first run and a resume without changing what is trained.
RESUMABLE_CHANGES = {
    "run_dir",  # a run directory may be moved or copied, then resumed from its new place
    "steps", "log_every", "ckpt_every", "keep_last", "sample_every", "tensorboard", "num_workers", "device",
    "eval_num", "eval_batch_size", "sampler", "sample_steps", "cfg_scale", "max_nonfinite_steps", "compile",
    "fsdp", "grad_checkpointing",  # how the same numbers are computed: free to change on resume
    "eval_every", "eval_fid_num", "eval_metrics", "eval_ref", "eval_ref_num",  # what is measured, not trained
}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_early: bool
    skipped_images: int
    final_loss: float


class _StopSignal:
    """SIGTERM/SIGINT: finish the current step, checkpoint, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. inside a test runner thread)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _close_on_error(logger: RunLogger):
    """An error ends the progress bar's line first, so that its one-line message stands on its own line."""
    try:
        yield
    except BaseException:
        logger.close()
        raise


def _check_same_run(config: TrainConfig, run_dir: Path) -> bool:
    """Refuse to resume a run directory that holds a different experiment; True when nothing is trained yet."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return True
    from ditlab.training.setup import AUTOENCODER_DIR

    if ckpt.latest_checkpoint(run_dir) is None and not (run_dir / AUTOENCODER_DIR).exists():
        return True  # nothing trained yet (say the last try stopped at a typo in --data): the new settings stand
    saved = load_config(saved_path).to_dict()
    for key, value in config.to_dict().items():
        if key in RESUMABLE_CHANGES or saved.get(key) == value:
            continue
        raise ConfigError(
            f"run directory '{run_dir}' holds a run with {key}={saved.get(key)!r}, not {value!r}: "
            f"rerun with the same settings to resume, or pass --run_dir NEW_DIR"
        )
    return False


def _autocast(config: TrainConfig, device: torch.device):
    if config.autocast == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.autocast]
    if device.type != "cuda":
        raise ConfigError(f"autocast {config.autocast} is for GPUs; on {device.type} use --autocast none")
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"GPU {torch.cuda.get_device_name(device)} has no bf16 support: use --autocast fp16 "
                          f"(with loss scaling) or --autocast none")
    return torch.autocast(device_type="cuda", dtype=dtype)


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _grad_scaler(enabled: bool):
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def _torch_at_least(major: int, minor: int) -> bool:
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return version >= (major, minor)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume) the run described by ``config``; returns where it ended."""
    device = pick_device(config.device)
    check_launch(config.fsdp)  # the launch, batch split, precision and compiler, before any work
    check_batch_split(config.global_batch_size, launch_world_size())
    _autocast(config, device)
    if config.compile:
        check_compile_backend(device)
    info = init_distributed(device, need_group=config.fsdp)
    device = info.device
    try:
        with lock_folder_on_rank0(config.run_dir, flag="--run_dir", what="run directory"):  # one writer per run
            return _train(config, device, info)
    except UserError:
        raise
    except Exception as err:  # disk full or unwritable while writing logs, latents or samples
        cause = ckpt.io_error(err)
        if cause is None or cause.errno not in _DISK_ERRORS:
            raise
        good = ckpt.latest_checkpoint(config.run_dir)
        raise UserError(
            f"{cause.strerror}: '{cause.filename or config.run_dir}': free space or fix permissions, then rerun "
            f"the same command (it resumes from {good or 'the start'})"
        ) from None
    finally:
        cleanup(info)


def _train(config: TrainConfig, device: torch.device, info: DistInfo) -> TrainResult:
    from ditlab.data import build_dataset
    from ditlab.training.generate import check_sampling

    local_batch = check_batch_split(config.global_batch_size, info.world_size)
    run_dir = Path(config.run_dir)
    fresh = _check_same_run(config, run_dir)
    if info.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            if fresh:  # a resumed run's config.json changes only once its checkpoint has loaded
                save_config(config, run_dir / "config.json")
        except OSError as err:
            raise UserError(
                f"cannot write run directory '{run_dir}' ({err.strerror}): choose a writable --run_dir"
            ) from None
    log = (lambda text: print(text, flush=True)) if info.is_main else (lambda text: None)
    # The same seed on every rank: per-step draws are made for the global batch (draw_step), so the
    # run does not depend on the number of processes. Python's and NumPy's RNGs too, so that the RNG
    # states a checkpoint stores are the seed's, not the operating system's.
    ckpt.seed_all(config.seed)

    process = build_process(config)
    check_sampling(process, config.sampler or None, config.sample_steps)  # now, not after training

    # ---- data and latent space
    dataset = None
    if config.latents:
        source, autoencoder, num_classes, latent_shape, image_channels = _cache_source(
            config, info, local_batch, device
        )
    else:
        dataset = build_dataset(config.data, config.image_size, flip=False)
        source, autoencoder, num_classes, latent_shape = _data_source(
            config, dataset, run_dir, info, local_batch, device, log
        )
        image_channels = int(getattr(dataset, "channels", 3))

    # ---- model and optimiser (the process first: a sampler it cannot run fails before the autoencoder trains)
    model = build_model(config, latent_shape, num_classes, process).to(device)
    # Labels are dropped here for the global batch (draw_step), not per rank inside the model.
    drop_prob = config.class_dropout_prob if getattr(model, "y_embedder", None) is not None else 0.0
    if drop_prob:
        model.y_embedder.dropout_prob = 0.0
    ema = EMA(model, decay=config.ema_decay, warmup=config.ema_warmup)
    if config.fsdp:  # the EMA is sharded like the model, so its update stays a local lerp of shards
        fsdp_shard(model, info)
        fsdp_shard(ema.shadow, info)
    # fused: one pass over each parameter instead of a dozen (the same update; a DiT-S/2 AdamW step
    # measured 0.11 -> 0.03 s on this project's 2-core CPU)
    fused = device.type == "cuda" or (device.type == "cpu" and _torch_at_least(2, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps))
    step, restored = 0, {}
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        step, restored = _restore(latest, model, ema, optimizer, scheduler, source, info)
        log(f"resuming from {latest} (step {step})")
    if not fresh and info.is_main:
        save_config(config, run_dir / "config.json")  # this rerun's resumable settings (steps, ...)
    saved_step = step if latest is not None else -1
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {config.model}: {n_params / 1e6:.2f}M parameters, latents {latent_shape}, "
        f"{num_classes} classes, {config.process} process, batch {config.global_batch_size}")

    train_model = model
    if config.compile:
        train_model = torch.compile(model)
    if info.enabled and not config.fsdp:
        train_model = wrap_ddp(train_model, info)
    scaler = _grad_scaler(config.autocast == "fp16")  # fp16 gradients underflow without loss scaling
    autocast = _autocast(config, device)

    def net(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        with autocast:  # the network in low precision, the loss in float32
            return train_model(x, t, **kwargs).float()
    meta = {
        "model": model.config.to_dict(),
        "num_classes": num_classes,
        "latent_shape": list(latent_shape),
        "image_channels": image_channels,
        "image_size": config.image_size,
        "autoencoder": autoencoder.identity(),
    }

    def save(at_step: int) -> Path | None:
        nonlocal saved_step
        path = None
        window = all_reduce_mean(loss_sum, info)  # collective: losses since the last log, for the next log
        # Full (unsharded) tensors in the single-process layout; gathering them is collective under FSDP.
        model_state, ema_state = full_model_state(model), full_model_state(ema.shadow)
        optimizer_state = full_optimizer_state(model, optimizer)
        if info.is_main:
            state = {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "step": at_step,
                "batches_consumed": source.consumed,
                "skipped_images": source.skipped,
                "rng": ckpt.rng_state(),
                "loss_window": (window.detach().cpu().clone(), loss_count),
            }
            path = ckpt.save_checkpoint(run_dir, at_step, model_state, ema_state, state, meta,
                                        keep_last=config.keep_last)
        barrier(info)
        saved_step = at_step
        return path

    periodic = PeriodicEval(config, run_dir, info, process=process, autoencoder=autoencoder, dataset=dataset,
                            latent_shape=latent_shape, num_classes=num_classes, device=device)  # checks up front
    logger = RunLogger(run_dir, start_step=step, total_steps=config.steps, tensorboard=config.tensorboard,
                       enabled=info.is_main)
    model.train()
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    if "loss_window" in restored:  # so the first loss logged after a resume averages the same steps
        loss_sum += restored["loss_window"][0].to(device)
        loss_count = int(restored["loss_window"][1])
    nonfinite_run = 0
    last_loss = float("nan")
    t_window = time.perf_counter()
    images_window = 0
    stopped = False
    with _StopSignal() as stop, _close_on_error(logger):
        while step < config.steps:
            x0, y = source.next()
            # t, noise and label dropout drawn for the global batch, this rank's rows kept
            draws = draw_step(process, config.seed, step, config.global_batch_size, latent_shape, device,
                              drop_prob).local(info.rank * local_batch, x0.shape[0])
            model_kwargs = {"y": drop_labels(y, draws.drop, num_classes)} if num_classes > 0 else {}
            loss = process.training_loss(net, x0, model_kwargs, t=draws.t, noise=draws.noise).mean()
            # decided on the mean over ranks, so that every rank skips the same steps
            if not torch.isfinite(all_reduce_mean(loss.detach(), info)).item():
                nonfinite_run += 1
                optimizer.zero_grad(set_to_none=True)
                good = ckpt.latest_checkpoint(run_dir)
                logger.message(f"warning: non-finite loss at step {step + 1}; step skipped")
                if nonfinite_run >= config.max_nonfinite_steps:
                    logger.close()
                    raise UserError(
                        f"{nonfinite_run} non-finite losses in a row up to step {step + 1}: lower --lr or check "
                        f"the data; last good checkpoint: {good if good else 'none'}"
                    )
                continue
            nonfinite_run = 0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema.update(model, step)
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            images_window += config.global_batch_size
            logger.advance()
            if step % config.log_every == 0 or step == config.steps:
                mean_loss = all_reduce_mean(loss_sum / max(loss_count, 1), info).item()
                elapsed = time.perf_counter() - t_window
                logger.scalars(step, {"loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                      "img_per_s": images_window / max(elapsed, 1e-9)})
                last_loss = mean_loss
                loss_sum.zero_()
                loss_count, images_window, t_window = 0, 0, time.perf_counter()
            if config.sample_every and step % config.sample_every == 0:
                sampler_model = _unsharded_copy(ema.shadow, device) if config.fsdp else ema.shadow  # collective
                if info.is_main:
                    _sample_grid(config, sampler_model, process, autoencoder, latent_shape, num_classes, device,
                                 run_dir / "samples" / f"step_{step:07d}.png")
                model.train()
            periodic.after_step(step, ema.shadow, logger)  # FID etc. every eval_every steps (all ranks call)
            if step % config.ckpt_every == 0 and step < config.steps:
                save(step)
            if broadcast_flag(stop.requested, info):
                stopped = True
                break
    if not math.isfinite(last_loss) and loss_count:
        last_loss = (loss_sum / loss_count).item()
    logger.close()  # end the progress bar's line before the last save can print anything
    final = save(step) if step != saved_step else ckpt.latest_checkpoint(run_dir)  # not twice
    if stopped and info.is_main:
        log(f"stopped at step {step}; checkpoint {final}. Resume by rerunning the same command.")
    if source.skipped and info.is_main:
        bad = dataset.bad_files() if hasattr(dataset, "bad_files") else []
        log(f"skipped {source.skipped} unreadable image loads ({len(bad)} files), e.g. {bad[:3]}")
    source.close()
    return TrainResult(run_dir, step, stopped, source.skipped, last_loss)


def _data_source(config: TrainConfig, dataset, run_dir: Path, info: DistInfo, local_batch: int, device, log):
    """Autoencoder + batch source for a dataset: built-ins encoded once into memory, folders on the fly."""
    if info.is_main:
        autoencoder = build_or_load_autoencoder(config, dataset, run_dir, device, log=log)
    barrier(info)
    if not info.is_main:
        autoencoder = build_or_load_autoencoder(config, dataset, run_dir, device, log=log)
    autoencoder.to(device)
    num_classes = int(dataset.num_classes)
    order = BatchOrder(len(dataset), config.global_batch_size, config.seed)
    if hasattr(dataset, "tensors"):  # built-in digits: no flips unless asked (a flipped 3 is no 3)
        if info.is_main:
            latents, labels = cached_latents(config, dataset, autoencoder, run_dir, device, log=log)
        barrier(info)
        if not info.is_main:
            latents, labels = cached_latents(config, dataset, autoencoder, run_dir, device, log=log)
        source = InMemorySource(latents, labels, order, info.rank, local_batch, device, flip=bool(config.flip))
        latent_shape = tuple(latents.shape[1:])
    else:
        flip = True if config.flip is None else config.flip  # folders: flips on by default (ADM, DiT)
        source = FolderSource(dataset, autoencoder, order, info.rank, local_batch, device,
                              config.num_workers, flip, config.vae_sample_posterior)
        with torch.no_grad():
            probe = autoencoder.encode(dataset_probe(dataset).to(device))
        latent_shape = tuple(probe.shape[1:])
    return source, autoencoder, num_classes, latent_shape


def _cache_source(config: TrainConfig, info: DistInfo, local_batch: int, device):
    """Autoencoder + batch source for a latent cache; refuses a cache of another autoencoder or size."""
    from ditlab.autoencoders import load_autoencoder
    from ditlab.data.latent_cache import LatentCache

    cache = LatentCache.open(config.latents)
    spec = cache.index.autoencoder_source if config.autoencoder == "auto" else config.autoencoder
    autoencoder = load_autoencoder(spec).to(device)
    latent_shape = tuple(cache.index.latent_shape)
    expected = (autoencoder.latent_channels, config.image_size // autoencoder.downsample,
                config.image_size // autoencoder.downsample)
    cache.check_compatible(autoencoder.identity(), config.image_size, expected)
    order = BatchOrder(len(cache), config.global_batch_size, config.seed)
    flip = True if config.flip is None else config.flip
    source = CacheSource(cache, order, info.rank, local_batch, device, flip=flip)
    return source, autoencoder, cache.index.num_classes, latent_shape, int(autoencoder.image_channels)


def dataset_probe(dataset) -> torch.Tensor:
    """One readable image of the dataset as a (1, C, H, W) batch (to learn the latent shape)."""
    for i in range(min(len(dataset), 64)):
        item = dataset[i]
        if item is not None:
            return item[0].unsqueeze(0)
    raise UserError("none of the first 64 images of the dataset can be read: check the data folder")


def _restore(path: Path, model, ema, optimizer, scheduler, source, info: DistInfo) -> tuple[int, dict]:
    meta = ckpt.read_meta(path)
    expected = {**model.config.to_dict(), "grad_checkpointing": None}  # recomputation: the same numbers
    if {**meta.get("model", {}), "grad_checkpointing": None} != expected:
        raise CheckpointError(
            f"checkpoint '{path}' holds another model ({meta.get('model', {}).get('name')}): "
            f"use a new --run_dir for this configuration"
        )
    # Full tensors in the single-process layout: each rank keeps its shard under FSDP.
    load_model_state(model, ckpt.load_weights(path / "model.safetensors"))
    load_model_state(ema.shadow, ckpt.load_weights(path / "ema.safetensors"))
    state = ckpt.load_train_state(path / "state.pt")
    load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    source.consumed = int(state["batches_consumed"])
    source.skipped = int(state.get("skipped_images", 0))
    rng = state["rng"]
    ckpt.set_rng_state(rng)  # rank 0's state on every rank: all ranks stay identical
    return int(state["step"]), state


def _unsharded_copy(module, device: torch.device) -> torch.nn.Module | None:
    """A plain copy of an FSDP-sharded DiT on rank 0 (None elsewhere); every rank must call it."""
    from ditlab.models import model_from_config

    state = full_model_state(module)
    if not state:
        return None
    copy = model_from_config(module.config).to(device)
    copy.load_state_dict(state)
    return copy.eval()


@torch.no_grad()
def _sample_grid(config: TrainConfig, model, process, autoencoder, latent_shape, num_classes, device, path) -> Path:
    """An EMA sample grid: 8 samples of each of up to 10 classes, fixed seeds (comparable across steps)."""
    from ditlab.training.generate import generate, save_grid

    rng_state = torch.get_rng_state()  # sampling must not shift the training RNG stream
    classes = list(range(min(num_classes, 10))) if num_classes else [0]
    per = 8
    labels = torch.tensor([c for c in classes for _ in range(per)])
    images = generate(model, process, autoencoder, latent_shape, labels, list(range(len(labels))),
                      num_classes=num_classes, sampler=config.sampler or None, steps=config.sample_steps,
                      cfg_scale=config.cfg_scale, device=device)
    torch.set_rng_state(rng_state)
    return save_grid(images, path, ncols=per)

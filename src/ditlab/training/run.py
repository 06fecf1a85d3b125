"""``build_run(config) -> Run``: everything a training run needs, built (or restored) before the first step.

Order matters and is fixed here: the run directory is checked against the config (a different experiment
is refused before anything is written), the process and sampler are checked (a sampler the process cannot
run fails before an autoencoder trains), then data + condition + autoencoder, the model, EMA, optimiser
and LR schedule, and finally the newest complete checkpoint is restored (weights, optimiser, schedule,
data position, RNG states).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditlab.conditioning import Condition
from ditlab.config import TrainConfig, load_config, resumable_fields, save_config
from ditlab.errors import CheckpointError, ConfigError, UserError
from ditlab.training import checkpoint as ckpt
from ditlab.training.distributed import (
    DistInfo,
    fsdp_shard,
    full_model_state,
    full_optimizer_state,
    load_model_state,
    load_optimizer_state,
    wrap_ddp,
)
from ditlab.training.ema import EMA
from ditlab.training.setup import AUTOENCODER_DIR, CONDITION_DIR, build_data, build_model, build_process, init_from
from ditlab.training.video_schedule import FrameSchedule


@dataclass
class Run:
    """A training run ready to step: its parts and where it stands."""

    config: TrainConfig
    run_dir: Path
    info: DistInfo
    device: torch.device
    process: Any
    condition: Condition
    source: Any  # next() -> (latents, condition records)
    autoencoder: Any
    model: nn.Module  # the plain (maybe FSDP-sharded) network whose weights are saved
    train_model: nn.Module  # what the step calls: compiled and/or DDP-wrapped
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    latent_shape: tuple[int, ...]
    meta: dict[str, Any]  # written into every checkpoint's meta.json: what sampling needs
    dataset: Any = None
    step: int = 0
    restored: dict[str, Any] = field(default_factory=dict)
    fresh: bool = True

    def autocast(self, cache: bool = True):
        return autocast_context(self.config, self.device, cache=cache)

    def state(self, loss_window: tuple[torch.Tensor, int]) -> dict[str, Any]:
        """The training state of a checkpoint (collective under FSDP: every rank calls it)."""
        return {
            "optimizer": full_optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "batches_consumed": self.source.consumed,
            "skipped_images": self.source.skipped,
            "rng": ckpt.rng_state(),
            "loss_window": (loss_window[0].detach().cpu().clone(), loss_window[1]),
        }

    def save(self, loss_window: tuple[torch.Tensor, int]) -> Path | None:
        """Write a checkpoint of this step (rank 0 writes; every rank must call: gathering is collective)."""
        model_state, ema_state = full_model_state(self.model), full_model_state(self.ema.shadow)
        state = self.state(loss_window)
        if not self.info.is_main:
            return None
        return ckpt.save_checkpoint(self.run_dir, self.step, model_state, ema_state, state, self.meta,
                                    keep_last=self.config.keep_last)


def autocast_context(config: TrainConfig, device: torch.device, cache: bool = True):
    """The mixed-precision context of the network's forward pass (checked: GPU only, bf16 support).

    ``cache=False``: no cache of casted weights across the context (as a step recorded as a CUDA graph needs).
    """
    if config.autocast == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.autocast]
    if device.type != "cuda":
        raise ConfigError(f"autocast {config.autocast} is for GPUs; on {device.type} use --autocast none")
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"GPU {torch.cuda.get_device_name(device)} has no bf16 support: use --autocast fp16 "
                          f"(with loss scaling) or --autocast none")
    return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=cache)


def check_same_run(config: TrainConfig, run_dir: Path) -> bool:
    """Refuse to resume a run directory that holds a different experiment; True when nothing is trained yet.

    Which fields may change on resume is declared on the config fields (``resumable`` metadata).
    """
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return True
    if ckpt.latest_checkpoint(run_dir) is None and not (run_dir / AUTOENCODER_DIR).exists():
        return True  # nothing trained yet (say the last try stopped at a typo in --data): the new settings stand
    saved = load_config(saved_path).to_dict()
    free = resumable_fields()
    for key, value in config.to_dict().items():
        if key in free or saved.get(key) == value:
            continue
        raise ConfigError(
            f"run directory '{run_dir}' holds a run with {key}={saved.get(key)!r}, not {value!r}: "
            f"rerun with the same settings to resume, or pass --run_dir NEW_DIR"
        )
    return False


def _torch_at_least(major: int, minor: int) -> bool:
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return version >= (major, minor)


def lr_factor(step: int, *, warmup: int, schedule: str = "constant", steps: int = 1, decay_steps: int = 0) -> float:
    """The learning rate of optimiser step ``step`` (0-based) as a fraction of ``--lr``: a linear warm-up over
    ``warmup`` steps, then constant, or a cosine / linear decay over the last ``decay_steps`` steps (0: every step
    after the warm-up) from 1 at its first step towards 0 at step ``steps`` (the last step, ``steps`` - 1, is one
    ``1 / decay_steps`` of the way short of it)."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return factor
    span = decay_steps if decay_steps > 0 else max(steps - warmup, 1)
    start = steps - span
    if step < start:
        return factor
    progress = min(1.0, (step - start) / span)  # 0 at the decay's first step, (span - 1) / span at the last
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return factor * decay


def _lr_lambda(config: TrainConfig):
    return functools.partial(lr_factor, warmup=config.warmup_steps, schedule=config.lr_schedule, steps=config.steps,
                             decay_steps=config.lr_decay_steps)


def build_run(config: TrainConfig, info: DistInfo, local_batch: int, log) -> Run:
    """Build (or restore) every part of the run ``config`` describes; see the module docstring."""
    from ditlab.sampling.pipeline import check_sampling

    device = info.device
    run_dir = Path(config.run_dir)
    fresh = check_same_run(config, run_dir)
    if info.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            if fresh:  # a resumed run's config.json changes only once its checkpoint has loaded
                save_config(config, run_dir / "config.json")
        except OSError as err:
            raise UserError(f"cannot write run directory '{run_dir}' ({err.strerror}): "
                            "choose a writable --run_dir") from None
    # The same seed on every rank: per-step draws are made for the global batch (draw_step), so the
    # run does not depend on the number of processes. Python's and NumPy's RNGs too, so that the RNG
    # states a checkpoint stores are the seed's, not the operating system's.
    ckpt.seed_all(config.seed)
    process = build_process(config)
    check_sampling(process, config.sampler or None, config.sample_steps)  # now, not after training
    data = build_data(config, run_dir, info, local_batch, device, log)
    if info.is_main:
        data.condition.save(run_dir / CONDITION_DIR)  # e.g. cached text features, for sampling later

    model = build_model(config, data.latent_shape, data.condition, process).to(device)
    if config.init_from and ckpt.latest_checkpoint(run_dir) is None:  # a fresh video run from an image model
        init_from(model, config.init_from)
    ema = EMA(model, decay=config.ema_decay, warmup=config.ema_warmup)
    if config.fsdp:  # the EMA is sharded like the model, so its update stays a local lerp of shards
        fsdp_shard(model, info)
        fsdp_shard(ema.shadow, info)
    # fused: one pass over each parameter instead of a dozen (the same update; a DiT-S/2 AdamW step
    # measured 0.11 -> 0.03 s on this project's 2-core CPU)
    fused = device.type == "cuda" or (device.type == "cpu" and _torch_at_least(2, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    meta = {
        "model": model.config.to_dict(),
        "num_classes": int(model.config.num_classes),
        "latent_shape": list(data.latent_shape),
        "image_channels": data.image_channels,
        "image_size": config.image_size,
        "autoencoder": data.autoencoder.identity(),
        "autoencoder_spec": data.autoencoder_spec,
        "process": process.to_dict(),
        "condition": data.condition.to_dict(),
        "buckets": data.buckets,  # aspect-ratio buckets (H, W) of a bucketed run, default size first; else None
        "sampling": {"sampler": config.sampler or None, "steps": config.sample_steps, "cfg_scale": config.cfg_scale},
    }
    train_model = torch.compile(model) if config.compile else model
    if config.compile_blocks:  # each block compiled in place: parameter names (and checkpoints) unchanged
        train_model = model.compile_blocks()
    if config.image_steps:  # a video run's first steps train frames as images (ditlab.training.video_schedule)
        if not model.config.is_video:
            raise ConfigError("image_steps trains a video model on frames first: it needs video data "
                              "(--data moving-mnist, or a folder with --num_frames N)")
        train_model = FrameSchedule(train_model, config.image_steps, lambda: run.step)  # `run` is made below
    if info.enabled and not config.fsdp:  # the image steps leave the temporal blocks out
        train_model = wrap_ddp(train_model, info, find_unused_parameters=bool(config.image_steps))
    run = Run(config=config, run_dir=run_dir, info=info, device=device, process=process, condition=data.condition,
              source=data.source, autoencoder=data.autoencoder, model=model, train_model=train_model, ema=ema,
              optimizer=optimizer, scheduler=scheduler, latent_shape=data.latent_shape, meta=meta,
              dataset=data.dataset, fresh=fresh)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        restore(run, latest)
        log(f"resuming from {latest} (step {run.step})")
    if not fresh and info.is_main:
        save_config(config, run_dir / "config.json")  # this rerun's resumable settings (steps, ...)
    return run


def restore(run: Run, path: Path) -> None:
    """Load a checkpoint into ``run``: weights, EMA, optimiser, LR schedule, data position and RNG states."""
    meta = ckpt.read_meta(path)
    expected = {**run.model.config.to_dict(), "grad_checkpointing": None}  # recomputation: the same numbers
    from ditlab.models.config import LEGACY_KEYS

    saved = {k: v for k, v in meta.get("model", {}).items() if k not in LEGACY_KEYS}
    saved = {**{k: v for k, v in expected.items() if k not in saved}, **saved, "grad_checkpointing": None}
    if saved != expected:
        raise CheckpointError(
            f"checkpoint '{path}' holds another model ({meta.get('model', {}).get('name')}): "
            f"use a new --run_dir for this configuration"
        )
    # Full tensors in the single-process layout: each rank keeps its shard under FSDP.
    load_model_state(run.model, ckpt.load_weights(path / "model.safetensors"))
    load_model_state(run.ema.shadow, ckpt.load_weights(path / "ema.safetensors"))
    state = ckpt.load_train_state(path / "state.pt")
    load_optimizer_state(run.model, run.optimizer, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.source.consumed = int(state["batches_consumed"])
    run.source.skipped = int(state.get("skipped_images", 0))
    ckpt.set_rng_state(state["rng"])  # rank 0's state on every rank: all ranks stay identical
    run.step = int(state["step"])
    run.restored = state

"""The training loop: one code path for one CPU, one GPU, or many under torchrun (DDP/FSDP).

``build_run`` (run.py) makes or restores every part; the loop below only steps. Rerunning the same
command resumes from the newest complete checkpoint with the optimiser, LR schedule, EMA, RNG states and
data position restored, so the continued run is the uninterrupted one.
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

from ditlab.config import TrainConfig
from ditlab.errors import UserError
from ditlab.models import fused
from ditlab.models.cuda_graph import GraphedStep
from ditlab.runlock import lock_folder_on_rank0
from ditlab.training import checkpoint as ckpt
from ditlab.training.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_flag,
    check_batch_split,
    check_compile_backend,
    check_launch,
    cleanup,
    draw_step,
    init_distributed,
    launch_world_size,
)
from ditlab.training.logger import RunLogger
from ditlab.training.periodic_eval import PeriodicEval, sample_grid
from ditlab.training.run import Run, autocast_context, build_run

_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


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


def _grad_scaler(enabled: bool):
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume) the run described by ``config``; returns where it ended."""
    from ditlab.devices import pick_device

    device = pick_device(config.device)
    check_launch(config.fsdp)  # the launch, batch split, precision and compiler, before any work
    check_batch_split(config.global_batch_size, launch_world_size())
    autocast_context(config, device)
    if config.compile or config.compile_blocks:
        check_compile_backend(device)
    info = init_distributed(device, need_group=config.fsdp)
    try:
        local_batch = check_batch_split(config.global_batch_size, info.world_size)
        log = (lambda text: print(text, flush=True)) if info.is_main else (lambda text: None)
        with (lock_folder_on_rank0(config.run_dir, flag="--run_dir", what="run directory"),  # one writer per run
              fused.use(config.fused_kernels)):  # opt-in fused GPU kernels (the CPU computes the same either way)
            run = build_run(config, info, local_batch, log)
            return _loop(run, log)
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


def graphed_step_applies(config: TrainConfig, info) -> bool:
    """``--cuda_graphs`` records the step for one process without fp16 loss scaling (a DDP or FSDP step
    talks to the other ranks; the loss scaler decides on the host)."""
    return config.cuda_graphs and not info.enabled and config.autocast != "fp16"


def _loop(run: Run, log) -> TrainResult:
    config, info, device = run.config, run.info, run.device
    n_params = sum(p.numel() for p in run.model.parameters())
    log(f"model {config.model}: {n_params / 1e6:.2f}M parameters, latents {run.latent_shape}, "
        f"condition {run.condition.kind}, {config.process} process, batch {config.global_batch_size}")
    scaler = _grad_scaler(config.autocast == "fp16")  # fp16 gradients underflow without loss scaling
    graphs = graphed_step_applies(config, info)
    if config.cuda_graphs and not graphs:
        log("cuda_graphs: off (a graphed step needs one process and no fp16 loss scaling)")
    autocast = run.autocast(cache=not graphs)

    def net(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        with autocast:  # the network in low precision, the loss in float32
            return run.train_model(x, t, **cond).float()

    def step_loss(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, **cond) -> torch.Tensor:
        return run.process.training_loss(net, x0, cond, t=t, noise=noise).mean()

    # opt-in: zero grads + forward + loss + backward as one CUDA graph replay (eager on the CPU: the same step)
    graphed = GraphedStep(step_loss, run.model.parameters()) if graphs else None

    periodic = PeriodicEval(run)  # checks metric weights and references up front
    logger = RunLogger(run.run_dir, start_step=run.step, total_steps=config.steps, tensorboard=config.tensorboard,
                       enabled=info.is_main)
    run.model.train()
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    if "loss_window" in run.restored:  # so the first loss logged after a resume averages the same steps
        loss_sum += run.restored["loss_window"][0].to(device)
        loss_count = int(run.restored["loss_window"][1])
    saved_step = run.step if run.restored else -1
    local_batch = check_batch_split(config.global_batch_size, info.world_size)
    drop_prob = config.cond_dropout_prob if run.condition.kind != "none" else 0.0

    def save() -> Path | None:
        nonlocal saved_step, loss_sum
        window = all_reduce_mean(loss_sum, info)  # collective: losses since the last log, for the next log
        path = run.save((window, loss_count))
        barrier(info)
        saved_step = run.step
        return path

    nonfinite_run, last_loss, images_window, stopped = 0, float("nan"), 0, False
    t_window = time.perf_counter()
    with _StopSignal() as stop, _close_on_error(logger):
        while run.step < config.steps:
            x0, records = run.source.next()
            # t, noise, condition dropout and option choice drawn for the global batch, this rank's rows kept
            # (the batch's own latent shape: every batch of a bucketed run is one of its sizes)
            draws = draw_step(run.process, config.seed, run.step, config.global_batch_size, tuple(x0.shape[1:]),
                              device, drop_prob).local(info.rank * local_batch, x0.shape[0])
            cond = run.condition.drop(run.condition.batch(records, draws.choice), draws.drop)
            if graphed is not None:  # the backward pass is part of the step
                loss = graphed(x0=x0, t=draws.t, noise=draws.noise, **cond)
            else:
                loss = step_loss(x0, draws.t, draws.noise, **cond)
            # decided on the mean over ranks, so that every rank skips the same steps
            if not torch.isfinite(all_reduce_mean(loss.detach(), info)).item():
                nonfinite_run += 1
                if graphed is None:  # (a graphed step keeps its gradient tensors; the next step rewrites them)
                    run.optimizer.zero_grad(set_to_none=True)
                good = ckpt.latest_checkpoint(run.run_dir)
                logger.message(f"warning: non-finite loss at step {run.step + 1}; step skipped")
                if nonfinite_run >= config.max_nonfinite_steps:
                    logger.close()
                    raise UserError(
                        f"{nonfinite_run} non-finite losses in a row up to step {run.step + 1}: lower --lr or "
                        f"check the data; last good checkpoint: {good if good else 'none'}"
                    )
                continue
            nonfinite_run = 0
            if graphed is None:
                run.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
            scaler.step(run.optimizer)
            scaler.update()
            run.scheduler.step()
            run.ema.update(run.model, run.step)
            run.step += 1
            loss_sum += loss.detach()
            loss_count += 1
            images_window += config.global_batch_size
            logger.advance()
            if run.step % config.log_every == 0 or run.step == config.steps:
                mean_loss = all_reduce_mean(loss_sum / max(loss_count, 1), info).item()
                elapsed = time.perf_counter() - t_window
                logger.scalars(run.step, {"loss": mean_loss, "lr": run.scheduler.get_last_lr()[0],
                                          "img_per_s": images_window / max(elapsed, 1e-9)})
                last_loss = mean_loss
                loss_sum.zero_()
                loss_count, images_window, t_window = 0, 0, time.perf_counter()
            if config.sample_every and run.step % config.sample_every == 0:
                sample_grid(run, run.run_dir / "samples" / f"step_{run.step:07d}.png")  # collective under FSDP
                run.model.train()
            periodic.after_step(run.step, logger)  # FID etc. every eval_every steps (all ranks call)
            if run.step % config.ckpt_every == 0 and run.step < config.steps:
                save()
            if broadcast_flag(stop.requested, info):
                stopped = True
                break
    if not math.isfinite(last_loss) and loss_count:
        last_loss = (loss_sum / loss_count).item()
    logger.close()  # end the progress bar's line before the last save can print anything
    final = save() if run.step != saved_step else ckpt.latest_checkpoint(run.run_dir)  # not twice
    if stopped and info.is_main:
        log(f"stopped at step {run.step}; checkpoint {final}. Resume by rerunning the same command.")
    if run.source.skipped and info.is_main:
        bad = run.dataset.bad_files() if hasattr(run.dataset, "bad_files") else []
        log(f"skipped {run.source.skipped} unreadable image loads ({len(bad)} files), e.g. {bad[:3]}")
    if info.is_main and hasattr(run.dataset, "report"):
        log(run.dataset.report())  # e.g. images without a caption, metadata lines naming absent images
    run.source.close()
    return TrainResult(run.run_dir, run.step, stopped, run.source.skipped, last_loss)

"""In-training evaluation: every ``eval_every`` steps, score ``eval_fid_num`` samples of the EMA model.

Metrics (``eval_metrics``; ``auto`` = ``fid``, plus ``mnist`` for MNIST runs):

* ``fid``: FID against the Inception statistics of the training set (``eval_ref_num`` images drawn
  with the run's seed; 0 = all of it) or of ``eval_ref`` (an image folder, ADM ``.npz`` or stats
  ``.npz``). The reference statistics are cached on disk, so they are computed once per reference set;
* ``mnist``: the MNIST classifier's class accuracy and Fréchet distance (and its ratio to the real-data
  floor) at the run's resolution (``ditlab.evaluation.scaling.MnistFrechet``).

The samples are the same at every evaluation (sample i has noise seed i and a label drawn by
``ditlab.sampling.many.random_labels`` from the run's seed), so the curve compares checkpoints on equal
terms. Under
torchrun each rank samples every world-size-th index and rank 0 scores them (under FSDP rank 0 samples
alone from a gathered copy). Values go to ``metrics.csv`` / TensorBoard as ``eval/<name>`` and are
plotted to ``RUN_DIR/eval.png``.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ditlab.errors import ConfigError
from ditlab.files import atomic_write

METRICS = ("fid", "mnist")
PLOT_NAME = "eval.png"


def eval_metric_names(config) -> list[str]:
    """The metrics ``config.eval_metrics`` asks for, checked against the data."""
    text = config.eval_metrics.strip().lower()
    names = (["fid", "mnist"] if config.data == "mnist" else ["fid"]) if text == "auto" else \
        [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in METRICS:
            raise ConfigError(f"unknown eval metric '{n}': use auto or a comma-separated list of {', '.join(METRICS)}")
    if "mnist" in names and config.data != "mnist":
        raise ConfigError(f"eval metric 'mnist' needs --data mnist (data is '{config.data}'): use --eval_metrics fid")
    if "fid" in names and config.latents and not config.eval_ref:
        raise ConfigError("FID during training from a latent cache needs reference images: pass --eval_ref "
                          "FOLDER|ADM.npz|STATS.npz, or --eval_metrics without fid")
    return names


def reference_images(config, dataset, num: int) -> np.ndarray:
    """``num`` training images (0 = all), drawn with the run's seed, as uint8 (N, H, W, C)."""
    from ditlab.sampling.outputs import to_uint8

    n = len(dataset)
    pick = (np.arange(n) if num <= 0 or num >= n
            else np.sort(np.random.default_rng(config.seed).choice(n, num, replace=False)))
    if hasattr(dataset, "tensors"):  # built-in: uint8 in memory
        images, _ = dataset.tensors()  # (N, C, H, W)
        return images[torch.from_numpy(pick)].permute(0, 2, 3, 1).numpy()
    out = []
    for i in pick:  # folders: the training transform (center crop, resize), unflipped
        item = dataset[int(i)]
        if item is not None:
            out.append(to_uint8(item[0][None])[0])
    return np.stack(out)


def build_scorers(config, dataset, device: torch.device, names: list[str] | None = None,
                  progress: bool = True) -> list:
    """The scorers of ``names`` (default: ``eval_metric_names(config)``) for this run's data."""
    from ditlab.evaluation.scaling import InceptionFID, MnistFrechet

    scorers = []
    for name in names if names is not None else eval_metric_names(config):
        if name == "mnist":
            scorers.append(MnistFrechet(config.image_size, seed=config.seed))
            continue
        from ditlab.evaluation import FeatureStats, InceptionFeatures, load_image_source, source_features

        extractor = InceptionFeatures(device, batch_size=64)
        if config.eval_ref:
            source = load_image_source(config.eval_ref)
            stats = source.stats if source.kind == "stats" else \
                FeatureStats.from_features(source_features(source, extractor, progress=progress)[0])
            scorers.append(InceptionFID(stats, extractor))
        else:
            images = reference_images(config, dataset, config.eval_ref_num)
            scorers.append(InceptionFID.from_images(images, extractor, progress=progress))
    return scorers


def score_samples(scorers: list, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All scorers' numbers for uint8 samples (N, H, W, C) with their labels (N,)."""
    out: dict[str, float] = {}
    for scorer in scorers:
        out.update(scorer.score(images, labels))
    return out


def check_metrics_available(names: list[str], config) -> None:
    """Fail before training when a metric's weights or reference cannot be found (cheap checks only)."""
    if "fid" in names:
        from ditlab.evaluation.inception import default_weights_path

        default_weights_path()
        if config.eval_ref:
            from ditlab.evaluation import load_image_source

            load_image_source(config.eval_ref)
    if "mnist" in names:
        from ditlab.evaluation.mnist_classifier import classifier_weights_path

        classifier_weights_path()


def ema_pipeline(run, model=None):
    """A sampling ``Pipeline`` over the run's EMA model (or ``model``) with the run's sampling settings."""
    from ditlab.sampling import Pipeline, SamplingDefaults

    cfg = run.config
    return Pipeline(model if model is not None else run.ema.shadow, run.process, run.autoencoder, run.condition,
                    run.latent_shape, defaults=SamplingDefaults(cfg.sampler or None, cfg.sample_steps, cfg.cfg_scale),
                    device=run.device, cuda_graphs=cfg.cuda_graphs)  # opt-in


def unsharded_copy(module, device: torch.device):
    """A plain copy of an FSDP-sharded DiT on rank 0 (None elsewhere); every rank must call it."""
    from ditlab.models import model_from_config
    from ditlab.training.distributed import full_model_state

    state = full_model_state(module)
    if not state:
        return None
    copy = model_from_config(module.config).to(device)
    copy.load_state_dict(state)
    return copy.eval()


@torch.no_grad()
def sample_grid(run, path: Path) -> Path | None:
    """An EMA sample grid: 8 samples of each of up to 10 classes (or prompts / unconditional), fixed seeds
    (comparable across steps), rows labelled. Every rank calls it (FSDP gathers); rank 0 writes it."""
    from ditlab.sampling.outputs import save_grid

    model = unsharded_copy(run.ema.shadow, run.device) if run.config.fsdp else run.ema.shadow  # collective
    if not run.info.is_main:
        return None
    rng_state = torch.get_rng_state()  # sampling must not shift the training RNG stream
    pipe = ema_pipeline(run, model)
    per = 8
    kind = run.condition.kind
    if kind == "class":
        got = pipe(labels=list(range(min(run.condition.num_classes, 10))),
                   num=per * min(run.condition.num_classes, 10), batch_size=run.config.eval_batch_size)
    elif kind == "text":
        got = pipe(prompts=run.condition.example_prompts(4), num=per * 4, batch_size=run.config.eval_batch_size)
    else:
        got = pipe(num=per, batch_size=run.config.eval_batch_size)
    torch.set_rng_state(rng_state)
    rows = [got.descriptions[i] for i in range(0, len(got.descriptions), per)] if kind != "none" else None
    return save_grid(got.images, path, ncols=per, row_labels=rows)


@torch.no_grad()
def eval_samples(pipe, config, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``indices`` of the evaluation set with ``config``'s sampler, steps and guidance: noise seed i,
    label ``random_labels(config.seed, [i])``."""
    from ditlab.sampling.many import random_labels

    num_classes = pipe.condition.num_classes if pipe.condition.kind == "class" else 0
    labels = random_labels(config.seed, indices, num_classes)
    if not len(indices):
        return np.zeros((0, 0, 0, 0), np.uint8), labels.numpy()
    got = pipe(labels=labels.tolist() if num_classes else None, num=len(indices), indices=list(indices),
               sampler=config.sampler or None, steps=config.sample_steps, cfg_scale=config.cfg_scale,
               batch_size=config.eval_batch_size)
    return got.images, labels.numpy()


def gather_eval_samples(pipe, config, num: int, info, *, split: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """Samples 0..num-1 on rank 0 (None elsewhere); with ``split`` each rank makes every world-th one.
    ``pipe`` is None on ranks that hold no model (FSDP: rank 0 samples alone from a gathered copy)."""
    import torch.distributed as dist

    if not info.enabled:
        return eval_samples(pipe, config, range(num))
    share = list(range(info.rank, num, info.world_size)) if split else (list(range(num)) if info.is_main else [])
    part = eval_samples(pipe, config, share) if pipe is not None and share else None
    parts: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object((share, part), parts, dst=0)
    if not info.is_main:
        return None
    images = [None] * num
    labels = np.zeros(num, np.int64)
    for idx, got in parts:
        if got is None:
            continue
        for j, i in enumerate(idx):
            images[i] = got[0][j]
            labels[i] = got[1][j]
    return np.stack(images), labels


class PeriodicEval:
    """The hook the training loop calls after every step; it evaluates when ``step % eval_every == 0``.

    Built before the first step: the cheap checks (weights files, ``eval_ref``) run there, so a missing
    file stops the run before training, not at the first evaluation. Reference statistics are made at
    the first evaluation (and cached on disk).
    """

    def __init__(self, run):
        self.run = run
        config = run.config
        self.enabled = config.eval_every > 0
        self.names = eval_metric_names(config) if self.enabled else []
        if self.enabled and run.info.is_main:
            check_metrics_available(self.names, config)
        self._scorers: list | None = None

    def after_step(self, step: int, logger) -> dict[str, float] | None:
        """Evaluate the EMA model if ``step`` is due, logging to ``logger`` (a ``RunLogger``); returns the
        metrics on rank 0 (None otherwise). Every rank must call it (sampling is shared, FSDP gathers)."""
        run = self.run
        cfg, info = run.config, run.info
        if not self.enabled or step % cfg.eval_every:
            return None
        rng = torch.get_rng_state()  # sampling must not shift the training RNG stream
        model = unsharded_copy(run.ema.shadow, run.device) if cfg.fsdp else run.ema.shadow  # collective
        pipe = ema_pipeline(run, model) if model is not None else None
        got = gather_eval_samples(pipe, cfg, cfg.eval_fid_num, info, split=not cfg.fsdp)
        torch.set_rng_state(rng)
        if not info.is_main:
            return None
        if self._scorers is None:
            self._scorers = build_scorers(cfg, run.dataset, run.device, self.names)
        values = score_samples(self._scorers, *got)
        logger.scalars(step, {f"eval/{k}": v for k, v in values.items()})
        logger.message(f"eval at step {step} ({cfg.eval_fid_num} samples): "
                       + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        plot_eval_history(run.run_dir)
        return values


def read_eval_history(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of the ``eval/*`` columns of ``RUN_DIR/metrics.csv``."""
    path = Path(run_dir) / "metrics.csv"
    history: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return history
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("eval/") and value not in ("", None):
                    history.setdefault(key[5:], []).append((int(row["step"]), float(value)))
    return history


def plot_eval_history(run_dir: str | Path) -> Path | None:
    """Plot every in-training metric against the step to ``RUN_DIR/eval.png`` (one panel per metric)."""
    history = {k: v for k, v in read_eval_history(run_dir).items() if not k.endswith("_floor")}
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(history), figsize=(3.6 * len(history), 3.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], sorted(history.items()), strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o")
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / PLOT_NAME
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100), durable=False)
    plt.close(fig)
    return path

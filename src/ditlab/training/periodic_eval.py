"""In-training evaluation: every ``eval_every`` steps, score ``eval_fid_num`` samples of the EMA model.

Metrics (``eval_metrics``; ``auto`` = ``fid``, plus ``mnist`` for MNIST runs):

* ``fid``: FID against the Inception statistics of the training set (``eval_ref_num`` images drawn
  with the run's seed; 0 = all of it) or of ``eval_ref`` (an image folder, ADM ``.npz`` or stats
  ``.npz``). The reference statistics are cached on disk, so they are computed once per reference set;
* ``mnist``: the MNIST classifier's class accuracy and Fréchet distance (and its ratio to the real-data
  floor) at the run's resolution (``ditlab.evaluation.scaling.MnistFrechet``).

The samples are the same at every evaluation (sample i has noise seed i and a label drawn by
``sample_labels`` from the run's seed), so the curve compares checkpoints on equal terms. Under
torchrun each rank samples every world-size-th index and rank 0 scores them (under FSDP rank 0 samples
alone from a gathered copy). Values go to ``metrics.csv`` / TensorBoard as ``eval/<name>`` and are
plotted to ``RUN_DIR/eval.png``.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ditlab.errors import ConfigError

METRICS = ("fid", "mnist")
PLOT_NAME = "eval.png"
_MASK64 = 2**64 - 1


def _mix64(seed: int, index: int) -> int:
    """splitmix64 of (seed, index): a counter-based generator, so value i does not depend on N."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_labels(seed: int, indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Uniformly random class labels (N,) of sample ``indices``: label i is fixed by (seed, i) alone.

    Drawn from a counter-based generator (splitmix64), so any subset of indices, on any rank and in
    any order, gets the labels the full set has. The modulo bias is below 1e-18. Unconditional
    models (``num_classes == 0``) get zeros.
    """
    if num_classes <= 0:
        return torch.zeros(len(indices), dtype=torch.long)
    return torch.tensor([_mix64(seed, int(i)) % num_classes for i in indices], dtype=torch.long)


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
    from ditlab.training.generate import to_uint8

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


@torch.no_grad()
def eval_samples(model, process, autoencoder, latent_shape, num_classes: int, config, indices: Sequence[int],
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``indices`` of the evaluation set: noise seed i, label ``sample_labels(config.seed, [i])``."""
    from ditlab.training.generate import generate

    labels = sample_labels(config.seed, indices, num_classes)
    if not len(indices):
        return np.zeros((0, 0, 0, 0), np.uint8), labels.numpy()
    images = generate(model, process, autoencoder, latent_shape, labels, list(indices), num_classes=num_classes,
                      sampler=config.sampler or None, steps=config.sample_steps, cfg_scale=config.cfg_scale,
                      batch_size=config.eval_batch_size, device=device)
    return images, labels.numpy()


def gather_eval_samples(model, process, autoencoder, latent_shape, num_classes: int, config, num: int,
                        device: torch.device, info, *, split: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """Samples 0..num-1 on rank 0 (None elsewhere); with ``split`` each rank makes every world-th one."""
    import torch.distributed as dist

    if not info.enabled:
        return eval_samples(model, process, autoencoder, latent_shape, num_classes, config, range(num), device)
    share = list(range(info.rank, num, info.world_size)) if split else (list(range(num)) if info.is_main else [])
    part = eval_samples(model, process, autoencoder, latent_shape, num_classes, config, share, device) \
        if model is not None and share else None
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


def _unsharded(module, device: torch.device):
    """A plain copy of an FSDP-sharded model on rank 0, None elsewhere (collective)."""
    from ditlab.models import model_from_config
    from ditlab.training.distributed import full_model_state

    state = full_model_state(module)
    if not state:
        return None
    copy = model_from_config(module.config).to(device)
    copy.load_state_dict(state)
    return copy.eval()


class PeriodicEval:
    """The hook the training loop calls after every step; it evaluates when ``step % eval_every == 0``.

    Built before the first step: the cheap checks (weights files, ``eval_ref``) run there, so a missing
    file stops the run before training, not at the first evaluation. Reference statistics are made at
    the first evaluation (and cached on disk).
    """

    def __init__(self, config, run_dir: str | Path, info, *, process, autoencoder, latent_shape,
                 num_classes: int, device: torch.device, dataset=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.info = info
        self.process, self.autoencoder = process, autoencoder
        self.latent_shape, self.num_classes = tuple(latent_shape), num_classes
        self.device, self.dataset = device, dataset
        self.enabled = config.eval_every > 0
        self.names = eval_metric_names(config) if self.enabled else []
        if self.enabled and info.is_main:
            check_metrics_available(self.names, config)
        self._scorers: list | None = None

    def after_step(self, step: int, ema_model, logger) -> dict[str, float] | None:
        """Evaluate ``ema_model`` if ``step`` is due, logging to ``logger`` (a ``RunLogger``); returns the
        metrics on rank 0 (None otherwise). Every rank must call it (sampling is shared, FSDP gathers)."""
        if not self.enabled or step % self.config.eval_every:
            return None
        cfg, info = self.config, self.info
        rng = torch.get_rng_state()  # sampling must not shift the training RNG stream
        model = _unsharded(ema_model, self.device) if cfg.fsdp else ema_model  # collective under FSDP
        got = gather_eval_samples(model, self.process, self.autoencoder, self.latent_shape, self.num_classes, cfg,
                                  cfg.eval_fid_num, self.device, info, split=not cfg.fsdp)
        torch.set_rng_state(rng)
        if not info.is_main:
            return None
        if self._scorers is None:
            self._scorers = build_scorers(cfg, self.dataset, self.device, self.names)
        values = score_samples(self._scorers, *got)
        logger.scalars(step, {f"eval/{k}": v for k, v in values.items()})
        logger.message(f"eval at step {step} ({cfg.eval_fid_num} samples): "
                            + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        plot_eval_history(self.run_dir)
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path

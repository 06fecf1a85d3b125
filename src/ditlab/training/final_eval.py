"""End-of-run evaluation: class-balanced samples from the EMA model, a grid, and metrics.json."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def spread_labels(classes: Sequence[int], num: int) -> torch.Tensor:
    """``num`` labels spread evenly over ``classes`` in order (the first classes take any remainder)."""
    k = len(classes)
    counts = [num // k + (1 if i < num % k else 0) for i in range(k)]
    return torch.tensor([c for c, n in zip(classes, counts, strict=True) for _ in range(n)], dtype=torch.long)


def evaluate_run(run_dir: str | Path, *, num: int, batch_size: int = 250, device: str | torch.device = "cpu",
                 seed: int = 0, log=print) -> dict:
    """Sample ``num`` images (evenly over all classes), save a grid and score them.

    For MNIST runs the score is the independent-classifier accuracy and Frechet distance (see
    ``ditlab.evaluation.mnist_classifier``); the result is written to ``RUN_DIR/metrics.json``.
    """
    from ditlab.evaluation.mnist_classifier import mnist_sample_metrics
    from ditlab.training.generate import generate, save_grid
    from ditlab.training.setup import load_run

    run = load_run(run_dir, device=device)
    config = run.config
    classes = list(range(run.num_classes)) if run.num_classes else [0]
    labels = spread_labels(classes, num)
    seeds = [seed + i for i in range(num)]
    t0 = time.perf_counter()
    images = generate(run.model, run.process, run.autoencoder, run.latent_shape, labels, seeds,
                      num_classes=run.num_classes, sampler=config.sampler or None, steps=config.sample_steps,
                      cfg_scale=config.cfg_scale, batch_size=batch_size, device=device)
    seconds = time.perf_counter() - t0
    run_dir = Path(run_dir)
    per_class = max(1, num // len(classes))
    show = np.concatenate([images[i * per_class : i * per_class + 10] for i in range(len(classes))])
    grid = save_grid(show, run_dir / "samples" / "final_grid.png", ncols=min(10, per_class))
    result = {
        "step": run.step,
        "sampler": config.sampler or run.process.default_sampler,
        "sample_steps": config.sample_steps,
        "cfg_scale": config.cfg_scale,
        "sampling_seconds": round(seconds, 2),
        "grid": str(grid),
    }
    if config.data == "mnist":
        result.update(mnist_sample_metrics(images, labels.numpy()))
        result["bar"] = {"accuracy_min": 0.95, "frechet_ratio_max": 3.0}
        result["meets_bar"] = bool(result["accuracy"] >= 0.95 and result["frechet_ratio"] <= 3.0)
    path = run_dir / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return result


def format_metrics(result: dict) -> str:
    """The lines printed at the end of `ditlab train`."""
    lines = [f"sample grid: {result['grid']}"]
    if "accuracy" in result:
        lines.append(
            f"MNIST classifier accuracy {result['accuracy']:.1%} (bar >= 95%); Frechet distance "
            f"{result['frechet_distance']:.2f} vs real-data floor {result['frechet_floor']:.2f} = "
            f"{result['frechet_ratio']:.2f}x (bar <= 3x) -> {'MEETS' if result['meets_bar'] else 'MISSES'} the bar"
        )
    return "\n".join(lines)


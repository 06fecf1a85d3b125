"""End-of-run evaluation: class-balanced samples from the EMA model, a grid, and metrics.json."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ditlab.files import atomic_write_json


def evaluate_run(run_dir: str | Path, *, num: int, batch_size: int = 250, device: str | torch.device = "cpu",
                 seed: int = 0) -> dict:
    """Sample ``num`` images (evenly over all classes) with the run's sampling settings, save a grid and
    score them.

    For MNIST runs the score is the independent-classifier accuracy and Frechet distance (see
    ``ditlab.evaluation.mnist_classifier``), computed on ``device`` too; the result is written to
    ``RUN_DIR/metrics.json``. The run's opt-in GPU switches (``cuda_graphs``, ``fused_kernels``) apply.
    """
    from ditlab.config import load_config
    from ditlab.evaluation.mnist_classifier import mnist_sample_metrics
    from ditlab.models import fused
    from ditlab.sampling import Pipeline
    from ditlab.sampling.outputs import save_grid

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.json")
    pipe = Pipeline.from_run(run_dir, device=device)
    pipe.cuda_graphs = config.cuda_graphs
    if pipe.condition.kind == "text":
        return _evaluate_text_run(run_dir, config, pipe, num=num, batch_size=batch_size, seed=seed)
    t0 = time.perf_counter()
    with fused.use(config.fused_kernels):
        got = pipe(num=num, seed=seed, batch_size=batch_size)  # class models: all classes, evenly, in order
    seconds = time.perf_counter() - t0
    if pipe.is_video:  # clips: a grid video and, for the moving digits, the video demo's figures
        return _evaluate_video(run_dir, config, pipe, got, seconds)
    classes = pipe.condition.num_classes if pipe.condition.kind == "class" else 1
    per_class = max(1, num // classes)
    show = np.concatenate([got.images[i * per_class : i * per_class + 10] for i in range(classes)])
    rows = [got.descriptions[i * per_class] for i in range(classes)] if pipe.condition.kind == "class" else None
    grid = save_grid(show, run_dir / "samples" / "final_grid.png", ncols=min(10, per_class), row_labels=rows)
    result = {
        "step": pipe.info["step"],
        "sampler": got.settings["sampler"],
        "sample_steps": got.settings["steps"],
        "cfg_scale": got.settings["cfg_scale"],
        "sampling_seconds": round(seconds, 2),
        "grid": str(grid),
    }
    if config.data == "mnist" and got.labels is not None:
        result.update(mnist_sample_metrics(got.images, got.labels, device=device))
        result["bar"] = {"accuracy_min": 0.95, "frechet_ratio_max": 3.0}
        result["meets_bar"] = bool(result["accuracy"] >= 0.95 and result["frechet_ratio"] <= 3.0)
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def _evaluate_video(run_dir: Path, config, pipe, got, seconds: float) -> dict:
    from ditlab.training.video_eval import (
        VIDEO_BAR,
        is_moving_digits,
        meets_video_bar,
        moving_digit_scores,
        write_grid_video,
    )

    grid = write_grid_video(got.images, got.labels, run_dir / "samples" / "final_grid.gif")
    result = {"step": pipe.info["step"], "sampler": got.settings["sampler"], "sample_steps": got.settings["steps"],
              "cfg_scale": got.settings["cfg_scale"], "sampling_seconds": round(seconds, 2), "grid": str(grid)}
    if is_moving_digits(config) and got.labels is not None:
        t0 = time.perf_counter()
        result.update(moving_digit_scores(pipe, got.images, got.labels, config))
        result["scoring_seconds"] = round(time.perf_counter() - t0, 2)
        result["bar"] = VIDEO_BAR
        result["meets_bar"] = meets_video_bar(result)
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def _evaluate_text_run(run_dir: Path, config, pipe, *, num: int, batch_size: int, seed: int) -> dict:
    """Text models: a grid of the dataset's example prompts; for captioned MNIST the text demo's scoring
    (``ditlab.evaluation.mnist_text``: held-out and seen combinations, Fréchet distance over ``num``
    samples prompted with test digits' captions)."""
    from ditlab.data import CAPTIONED_BUILTINS
    from ditlab.models import fused
    from ditlab.sampling.outputs import save_grid

    def generate(prompts: list[str]) -> np.ndarray:
        with fused.use(config.fused_kernels):
            return pipe(prompts=prompts, num=len(prompts), seed=seed, batch_size=batch_size).images

    result: dict = {"step": pipe.info["step"], "sampler": pipe.defaults.sampler or pipe.process.default_sampler,
                    "sample_steps": pipe.defaults.steps, "cfg_scale": pipe.defaults.cfg_scale}
    t0 = time.perf_counter()
    if config.data in CAPTIONED_BUILTINS:
        from ditlab.evaluation.mnist_text import score_text_demo

        scores, samples = score_text_demo(generate, fd_num=num, seed=seed)
        result.update(scores)
        per = 100  # samples per combination: the grid shows 10 of each held-out combination, rows labelled
        show = np.concatenate([samples["held_out"][i * per : i * per + 10] for i in range(10)])
        rows = _first_prompts(per)
        grid = save_grid(show, run_dir / "samples" / "final_grid.png", ncols=10, row_labels=rows)
    else:
        prompts = pipe.condition.example_prompts(4)
        got = pipe(prompts=prompts, num=32, seed=seed, batch_size=batch_size)
        grid = save_grid(got.images, run_dir / "samples" / "final_grid.png", ncols=8,
                         row_labels=[got.descriptions[i] for i in range(0, 32, 8)])
    result["sampling_seconds"] = round(time.perf_counter() - t0, 2)
    result["grid"] = str(grid)
    atomic_write_json(run_dir / "metrics.json", result)
    return result


def _first_prompts(per: int) -> list[str]:
    """The grid's row labels: each held-out combination, e.g. ``held out 3/thick/upright``."""
    from ditlab.data.mnist_captions import HELD_OUT
    from ditlab.evaluation.text_adherence import combination_name

    return [f"held out {combination_name(*c)}" for c in HELD_OUT]


def format_metrics(result: dict) -> str:
    """The lines printed at the end of `ditlab train`."""
    lines = [f"sample grid: {result['grid']}"]
    if "held_out" in result:
        from ditlab.evaluation.mnist_text import format_text_metrics

        lines += format_text_metrics(result)
    if "direction_accuracy" in result:
        from ditlab.training.video_eval import format_video_scores

        lines.append(format_video_scores(result))
    if "accuracy" in result:
        lines.append(
            f"MNIST classifier accuracy {result['accuracy']:.1%} (bar >= 95%); Frechet distance "
            f"{result['frechet_distance']:.2f} vs real-data floor {result['frechet_floor']:.2f} = "
            f"{result['frechet_ratio']:.2f}x (bar <= 3x) -> {'MEETS' if result['meets_bar'] else 'MISSES'} the bar"
        )
    return "\n".join(lines)

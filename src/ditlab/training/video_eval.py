"""End-of-run figures of a video run: the grid video, and the moving-digit demo's scores and bar.

For the built-in moving digits (one digit, class = digit x 8 + direction) the samples are scored with
``ditlab.evaluation.motion.video_digit_metrics`` against real evaluation videos (test digits) of the same geometry. Real
moving digits move whole pixels at constant speed, so their centre-of-mass track is exactly smooth
(0 px/frame²) and no generator can be "at most 2x" of it; the smoothness reference is therefore the
same real videos passed through the run's autoencoder (encode, decode), the best a latent model can
show (measured 0.069 px/frame² through the demo's VAE recipe).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# The bar for the video demo (issue 14, item 5); digit_consistency is "the same digit in every frame".
VIDEO_BAR = {"frame_accuracy_min": 0.9, "digit_consistency_min": 0.9, "direction_accuracy_min": 0.8,
             "smoothness_ratio_max": 2.0, "frechet_ratio_max": 3.0}


def write_grid_video(images: np.ndarray, labels: np.ndarray | None, path: Path, fps: float = 8.0) -> Path:
    """One sample per class for up to 80 classes (rows of 8: moving digits put one digit per row, one direction
    per column), or the first 64 samples; written as a GIF."""
    from ditlab.data.video_io import write_video_grid

    if labels is not None:
        first = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)[:80]]
        show = images[first]
    else:
        show = images[:64]
    return write_video_grid(path, show, fps=fps, ncols=min(8, len(show)))


def is_moving_digits(config) -> bool:
    """A run on the built-in moving digits with one digit per video (the demo's scoring applies)."""
    return config.data == "moving-mnist" and config.num_digits in (0, 1)


@torch.no_grad()
def moving_digit_scores(pipe, images: np.ndarray, labels: np.ndarray, config) -> dict:
    """The demo's figures for sampled clips uint8 (N, F, H, W, 1) of classes ``labels`` (N,) (see module doc)."""
    from ditlab.autoencoders import encode_frames
    from ditlab.data import build_dataset
    from ditlab.evaluation.motion import video_digit_metrics
    from ditlab.training.setup import video_options

    options = {**video_options(config), "num_videos": len(images)}
    real = build_dataset(config.data, config.image_size, split="test", **options).tensors()[0]  # (N, 1, F, H, W) uint8
    recon = []
    for start in range(0, real.shape[0], 100):
        clip = real[start : start + 100].to(pipe.device).float() / 127.5 - 1.0
        recon.append(pipe.decode(encode_frames(pipe.autoencoder, clip)))  # (n, F, H, W, 1) uint8
    scores = video_digit_metrics(images, labels // 8, labels % 8, real[:, 0].numpy(),
                                 smoothness_reference=np.concatenate(recon))
    scores["smoothness_reference"] = "the real videos through the run's autoencoder (raw moving digits score 0)"
    return scores


def meets_video_bar(scores: dict) -> bool:
    b = VIDEO_BAR
    return bool(scores["frame_accuracy"] >= b["frame_accuracy_min"]
                and scores["digit_consistency"] >= b["digit_consistency_min"]
                and scores["direction_accuracy"] >= b["direction_accuracy_min"]
                and scores["smoothness_ratio"] <= b["smoothness_ratio_max"]
                and scores["frechet_ratio"] <= b["frechet_ratio_max"])


def format_video_scores(result: dict) -> str:
    """The lines `ditlab train` prints for a moving-digit run."""
    return "\n".join([
        f"per-frame digit accuracy {result['frame_accuracy']:.1%} (bar >= 90%); the same digit in every frame "
        f"{result['digit_consistency']:.1%} (bar >= 90%; the requested one {result['video_digit_accuracy']:.1%})",
        f"direction right {result['direction_accuracy']:.1%} (bar >= 80%); smoothness {result['smoothness']:.3f} "
        f"px/frame² vs {result['smoothness_real']:.3f} through the autoencoder = {result['smoothness_ratio']:.2f}x "
        f"(bar <= 2x)",
        f"per-frame Frechet distance {result['frechet_distance']:.2f} vs real-frame floor "
        f"{result['frechet_floor']:.2f} = {result['frechet_ratio']:.2f}x (bar <= 3x) -> "
        f"{'MEETS' if result['meets_bar'] else 'MISSES'} the bar",
    ])

"""The moving-digit video demo's metrics: digits per frame, direction of motion, smoothness, Fréchet.

All measurements start from the ink's centre of mass (COM) in every frame of uint8 videos
(N, F, H, W[, 1]) with one digit each:

* **ink and COM.** A pixel's weight is ``max(v - ink_threshold, 0)`` (default threshold 32 of 255), so
  the faint haze a generator leaves on the black background does not pull the COM towards the
  canvas centre. Shifting a digit by whole pixels shifts this COM by exactly as much, so on real
  moving-MNIST videos the COM track is the digit's track. A frame with no ink has no COM (NaN).
* **per-frame digit.** The ccexam MNIST classifier (``mnist_classifier``) reads the 28x28 crop whose
  pixel (14, 14) holds the rounded COM (MNIST centres digits by their COM at (14, 14)); the crop is
  padded with black where it leaves the canvas. ``frame_accuracy`` = fraction of frames read as the
  requested digit; ``video_digit_accuracy`` = fraction of videos read as it in every frame;
  ``digit_consistency`` = fraction of videos read as one digit (any) in every frame.
* **bounces.** Displacements ``d_t = com[t+1] - com[t]``. A step ``t >= 1`` is a bounce when some axis
  reverses: ``d_{t-1}`` and ``d_t`` have opposite signs on it and both move at least ``min_step`` px
  (default 1, half the data's slowest speed), so sub-pixel wobble of a digit moving along the other
  axis never counts. On real videos this finds exactly the generator's bounces.
* **direction.** The mean displacement over the steps before the first bounce, mapped to the nearest
  of the 8 compass directions (``atan2(dx, -dy)`` in 45-degree sectors, 0 = up, clockwise); a mean
  displacement under ``min_motion`` px per frame (default 0.5) is "no motion" and never right.
  ``direction_accuracy`` = fraction of videos moving in the requested direction.
* **smoothness.** Mean Euclidean norm of the COM track's second difference ``|d_t - d_{t-1}|`` over all
  steps ``t`` that are not bounces (px per frame²); ``com_jitter`` is the same including bounces.
  Real moving-MNIST videos move whole pixels at constant speed, so their smoothness is exactly 0:
  compare a model against a nonzero floor, e.g. real videos passed through the autoencoder.
  ``smoothness_ratio`` is sample / reference (1 when both are 0, inf when only the reference is).
  ``bounce_rate`` (bounce steps / steps) is reported for both sets, so a model whose wobble is
  excused as "bounces" shows up.
* **Fréchet distance.** The classifier's 128-d features of all frame crops against the MNIST test
  set's, next to the *real-frame floor*: the same computation on the crops of real videos (same
  number of videos and frames, so frames of one video are as correlated as in the samples).
"""
from __future__ import annotations

import math

import numpy as np

from ditlab.errors import DataError
from ditlab.evaluation.frechet import feature_statistics, frechet_distance

CROP = 28
_CENTRE = 14  # MNIST puts the digit's COM at pixel (14, 14) of its 28x28 frame (measured: 14.01, 14.00)


def _as_videos(videos: np.ndarray) -> np.ndarray:
    """uint8 (N, F, H, W) or (N, F, H, W, 1) -> (N, F, H, W)."""
    v = np.asarray(videos)
    if v.dtype != np.uint8:
        raise ValueError(f"videos must be uint8, got {v.dtype}")
    if v.ndim == 5:
        if v.shape[-1] != 1:
            raise ValueError(f"motion metrics need one-channel videos (N, F, H, W, 1), got shape {v.shape}")
        v = v[..., 0]
    if v.ndim != 4 or v.shape[1] < 3:
        raise ValueError(f"videos must be (N, F, H, W[, 1]) with F >= 3 frames, got shape {v.shape}")
    return v


def centre_of_mass(videos: np.ndarray, ink_threshold: float = 32.0) -> np.ndarray:
    """The ink's centre of mass (x, y) per frame, float64 (N, F, 2); NaN for frames without ink."""
    v = _as_videos(videos)
    w = np.clip(v.astype(np.float32) - np.float32(ink_threshold), 0, None)  # (N, F, H, W)
    mass = w.sum(axis=(2, 3), dtype=np.float64)  # (N, F)
    xs = np.arange(v.shape[3], dtype=np.float64)
    ys = np.arange(v.shape[2], dtype=np.float64)
    cx = w.sum(axis=2, dtype=np.float64) @ xs  # (N, F)
    cy = w.sum(axis=3, dtype=np.float64) @ ys
    with np.errstate(invalid="ignore", divide="ignore"):
        com = np.stack([cx / mass, cy / mass], axis=-1)  # (N, F, 2)
    com[mass <= 0] = np.nan
    return com


def centred_crops(videos: np.ndarray, com: np.ndarray) -> np.ndarray:
    """The 28x28 crop of every frame with the rounded COM at pixel (14, 14), black outside -> (N, F, 28, 28).

    Frames without a COM are cropped at the canvas centre.
    """
    v = _as_videos(videos)
    n, f, h, w = v.shape
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    c = np.where(np.isnan(com), centre, com)
    origin = np.floor(c + 0.5).astype(np.int64) - _CENTRE + CROP  # (N, F, 2) in padded coordinates
    origin[..., 0] = origin[..., 0].clip(0, w + CROP)
    origin[..., 1] = origin[..., 1].clip(0, h + CROP)
    padded = np.pad(v.reshape(n * f, h, w), ((0, 0), (CROP, CROP), (CROP, CROP)))  # (N*F, H+56, W+56)
    s = padded.strides
    windows = np.lib.stride_tricks.as_strided(
        padded, shape=(n * f, h + CROP + 1, w + CROP + 1, CROP, CROP), strides=(s[0], s[1], s[2], s[1], s[2]),
        writeable=False)
    o = origin.reshape(n * f, 2)
    return windows[np.arange(n * f), o[:, 1], o[:, 0]].reshape(n, f, CROP, CROP)


def bounce_steps(com: np.ndarray, min_step: float = 1.0) -> np.ndarray:
    """bool (N, F-1): step t (from frame t to t+1) reverses an axis of step t-1, both moving >= min_step px."""
    d = np.diff(com, axis=1)  # (N, F-1, 2)
    prev, cur = d[:, :-1], d[:, 1:]
    with np.errstate(invalid="ignore"):
        flip = (np.sign(prev) * np.sign(cur) < 0) & (np.abs(prev) >= min_step) & (np.abs(cur) >= min_step)
    out = np.zeros(d.shape[:2], dtype=bool)
    out[:, 1:] = flip.any(axis=-1)
    return out


def compass_direction(displacement: np.ndarray, min_motion: float = 0.5) -> np.ndarray:
    """Nearest of 8 compass directions (0 = up, clockwise) of displacements (..., 2) = (dx, dy), y down.

    -1 where the displacement is shorter than ``min_motion`` or not finite.
    """
    dx, dy = displacement[..., 0], displacement[..., 1]
    angle = np.arctan2(dx, -dy)  # 0 = up, pi/2 = right
    k = np.mod(np.rint(angle / (math.pi / 4)), 8)
    with np.errstate(invalid="ignore"):
        moving = np.hypot(dx, dy) >= min_motion
    return np.where(moving & np.isfinite(angle), k, -1).astype(np.int64)


def motion_statistics(com: np.ndarray, *, min_step: float = 1.0, min_motion: float = 0.5) -> dict[str, np.ndarray]:
    """Per-video direction (N,) (-1: none), first bounce step (N,) (-1: none), and the second-difference
    norms (N, F-2) with a mask (N, F-2) of those that are not at a bounce (and are finite)."""
    d = np.diff(com, axis=1)  # (N, F-1, 2)
    bounce = bounce_steps(com, min_step)  # (N, F-1)
    first = np.where(bounce.any(axis=1), bounce.argmax(axis=1), -1)
    clean = np.arange(d.shape[1])[None, :] < np.where(first < 0, d.shape[1], first)[:, None]  # (N, F-1)
    with np.errstate(invalid="ignore"):
        mean_step = np.where(clean[..., None], d, 0.0).sum(axis=1) / clean.sum(axis=1)[:, None]  # (N, 2)
    accel = np.linalg.norm(np.diff(d, axis=1), axis=-1)  # (N, F-2): |d_t - d_{t-1}| for t = 1..F-2
    accel[accel < 1e-9] = 0.0  # round-off of exact whole-pixel tracks, so real videos score exactly 0
    finite = np.isfinite(accel)
    return {
        "direction": compass_direction(mean_step, min_motion),
        "first_bounce": first,
        "accel": accel,
        "smooth_mask": finite & ~bounce[:, 1:],
        "finite_mask": finite,
        "bounce": bounce,
    }


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


def _track_summary(com: np.ndarray, directions: np.ndarray | None, **kw) -> dict[str, float]:
    st = motion_statistics(com, **kw)
    steps = st["bounce"][:, 1:]
    out = {
        "smoothness": _mean(st["accel"], st["smooth_mask"]),
        "com_jitter": _mean(st["accel"], st["finite_mask"]),
        "bounce_rate": float(steps.mean()) if steps.size else 0.0,
    }
    if directions is not None:
        out["direction_accuracy"] = float((st["direction"] == np.asarray(directions)).mean())
    return out


_TEST_STATS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _mnist_test_statistics(model) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the classifier's features on the 10,000 MNIST test digits (once per process)."""
    if "28" not in _TEST_STATS:
        from ditlab.data import build_dataset
        from ditlab.evaluation.mnist_classifier import classify

        test, _ = build_dataset("mnist", 28, split="test").tensors()  # (10000, 1, 28, 28) uint8
        _TEST_STATS["28"] = feature_statistics(classify(test[:, 0].numpy(), model)[1])
    return _TEST_STATS["28"]


def video_digit_metrics(
    videos: np.ndarray, digits: np.ndarray, directions: np.ndarray, real_videos: np.ndarray, *,
    smoothness_reference: np.ndarray | None = None, ink_threshold: float = 32.0, min_step: float = 1.0,
    min_motion: float = 0.5,
) -> dict[str, float]:
    """Every figure of the moving-digit demo for sample videos against real ones (see the module docstring).

    Args:
        videos: uint8 (N, F, H, W[, 1]) samples, one digit each.
        digits, directions: the requested digit (0-9) and direction (0-7) of each sample, (N,).
        real_videos: uint8 real videos of the same geometry (usually N training videos): the Fréchet
            floor, and the smoothness reference unless ``smoothness_reference`` is given. Their own
            digits are not needed.
        smoothness_reference: videos for ``*_real`` track figures instead, e.g. real videos passed
            through the autoencoder (raw moving MNIST scores exactly 0; measured through the demo's
            VAE recipe: 0.069).

    Returns a flat dict of floats: ``frame_accuracy``, ``video_digit_accuracy``, ``digit_consistency``,
    ``direction_accuracy``, ``smoothness`` / ``smoothness_real`` / ``smoothness_ratio``, ``com_jitter`` /
    ``com_jitter_real``, ``bounce_rate`` / ``bounce_rate_real``, ``empty_frames``, ``frechet_distance`` /
    ``frechet_floor`` / ``frechet_ratio``, ``num_videos``, ``num_frames``.
    """
    from ditlab.evaluation.mnist_classifier import classify, load_classifier

    v, real = _as_videos(videos), _as_videos(real_videos)
    digits, directions = np.asarray(digits).reshape(-1), np.asarray(directions).reshape(-1)
    if len(digits) != len(v) or len(directions) != len(v):
        raise DataError(f"got {len(v)} videos but {len(digits)} digits and {len(directions)} directions: "
                        "pass one requested digit and direction per video")
    if len(v) < 2 or len(real) < 2:
        raise DataError(f"need at least 2 sample and 2 real videos for a Fréchet distance, got {len(v)} and "
                        f"{len(real)}: sample more videos")
    n, f = v.shape[:2]
    kw = {"min_step": min_step, "min_motion": min_motion}
    model = load_classifier()
    mu_test, sigma_test = _mnist_test_statistics(model)

    com = centre_of_mass(v, ink_threshold)
    pred, feats = classify(centred_crops(v, com).reshape(n * f, CROP, CROP), model)
    pred = pred.reshape(n, f)
    real_com = centre_of_mass(real, ink_threshold)
    _, real_feats = classify(centred_crops(real, real_com).reshape(-1, CROP, CROP), model)

    track_ref = real_com if smoothness_reference is None else centre_of_mass(smoothness_reference, ink_threshold)
    sample, ref = _track_summary(com, directions, **kw), _track_summary(track_ref, None, **kw)
    distance = frechet_distance(*feature_statistics(feats), mu_test, sigma_test)
    floor = frechet_distance(*feature_statistics(real_feats), mu_test, sigma_test)
    return {
        "num_videos": int(n),
        "num_frames": int(f),
        "frame_accuracy": float((pred == digits[:, None]).mean()),
        "video_digit_accuracy": float((pred == digits[:, None]).all(axis=1).mean()),
        "digit_consistency": float((pred == pred[:, :1]).all(axis=1).mean()),
        "direction_accuracy": sample["direction_accuracy"],
        "smoothness": sample["smoothness"],
        "smoothness_real": ref["smoothness"],
        "smoothness_ratio": _ratio(sample["smoothness"], ref["smoothness"]),
        "com_jitter": sample["com_jitter"],
        "com_jitter_real": ref["com_jitter"],
        "bounce_rate": sample["bounce_rate"],
        "bounce_rate_real": ref["bounce_rate"],
        "empty_frames": float(np.isnan(com[..., 0]).mean()),
        "frechet_distance": float(distance),
        "frechet_floor": float(floor),
        "frechet_ratio": float(distance / floor),
    }

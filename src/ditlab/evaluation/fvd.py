"""Fréchet Video Distance (Unterthiner et al. 2018) with StyleGAN-V's I3D, and per-frame FID.

FVD is the Fréchet distance between Gaussians fitted to I3D features of real and generated clips.
The field's numbers come from StyleGAN-V's evaluation code (Skorokhodov et al. 2022), which ports the
TF-Hub I3D (Kinetics-400) of the original FVD to TorchScript (``i3d_torchscript.pt``) and whose
conventions we follow:

* clips of 16 consecutive frames; we take each video's first 16 (as StyleGAN-V does for generators);
* the network gets uint8 pixels as (N, 3, T, H, W) (grayscale repeated to 3 channels) and is called as
  ``net(x, rescale=True, resize=True, return_features=True)``: it scales [0, 255] to [-1, 1] and
  resizes every frame to 224x224 itself, and returns its 400-d pre-softmax features;
* Gaussian statistics with the *biased* covariance (divisor N: StyleGAN-V accumulates sums of
  ``x xᵀ``), then the usual Fréchet distance (``frechet.frechet_distance``).

``preprocess="videogpt"`` is the other convention in use (VideoGPT / TATS and the
common_metrics_on_video_quality scripts): frames are resized outside the network (bilinear, short
side to 224, centre crop), scaled to [-1, 1], and the network is called with ``rescale=False,
resize=False``. The two differ by a few percent; compare numbers from one convention only.

No I3D ships with ditlab and nothing is downloaded: pass the path of a local ``i3d_torchscript.pt``
(or set ``DITLAB_I3D``). Loading runs TorchScript, so use only a file you trust.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.errors import CheckpointError, ConfigError, DataError, UserError
from ditlab.evaluation.frechet import feature_statistics
from ditlab.evaluation.metrics import FeatureStats, fid

FVD_NUM_FRAMES = 16
I3D_SIZE = 224
PREPROCESS_MODES = ("stylegan-v", "videogpt")


def default_i3d_path() -> Path:
    """``$DITLAB_I3D``, else ``$DITLAB_CACHE/i3d_torchscript.pt`` (nothing is downloaded)."""
    env = os.environ.get("DITLAB_I3D")
    if env:
        return Path(env).expanduser()
    from ditlab.data.builtin import cache_dir

    return cache_dir() / "i3d_torchscript.pt"


def _as_videos(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, F, H, W[, C]) with C in (1, 3) -> uint8 tensor (N, F, H, W, 3)."""
    v = torch.as_tensor(np.asarray(videos)) if not isinstance(videos, torch.Tensor) else videos.detach().cpu()
    if v.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8, got {v.dtype}")
    if v.ndim == 4:
        v = v.unsqueeze(-1)
    if v.ndim != 5 or v.shape[-1] not in (1, 3):
        raise ValueError(f"videos must be (N, F, H, W, C) with C = 1 or 3, got shape {tuple(v.shape)}")
    return v.expand(-1, -1, -1, -1, 3) if v.shape[-1] == 1 else v


def resize_short_side_crop(x: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """Float (N, C, T, H, W): bilinear resize of the short side to ``size``, centre crop -> (N, C, T, size, size)."""
    n, c, t, h, w = x.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)  # (N*T, C, H, W)
    frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    frames = frames[:, :, top : top + size, left : left + size]
    return frames.reshape(n, t, c, size, size).permute(0, 2, 1, 3, 4)  # (N, C, T, size, size)


class I3DFeatures:
    """The FVD detector (a TorchScript I3D) on one device: uint8 videos (N, F, H, W, C) -> features (N, D).

    Args:
        path: a TorchScript file with StyleGAN-V's call signature
            ``net(x, rescale: bool, resize: bool, return_features: bool)``; default ``default_i3d_path()``.
        device: torch device to run on.
        batch_size: clips per forward pass.
        num_frames: frames per clip (16 for FVD as published; other lengths are not comparable).
        preprocess: ``"stylegan-v"`` (default) or ``"videogpt"``, see the module docstring.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
                 batch_size: int = 16, num_frames: int = FVD_NUM_FRAMES, preprocess: str = "stylegan-v"):
        if preprocess not in PREPROCESS_MODES:
            raise ConfigError(f"unknown FVD preprocessing {preprocess!r}: choose from {', '.join(PREPROCESS_MODES)}")
        if num_frames < 1 or batch_size < 1:
            raise ConfigError(f"num_frames and batch_size must be positive, got {num_frames} and {batch_size}")
        self.path = Path(path).expanduser() if path else default_i3d_path()
        if not self.path.is_file():
            raise CheckpointError(
                f"no I3D network at {self.path}: download StyleGAN-V's i3d_torchscript.pt once and pass its path "
                "(or set DITLAB_I3D); ditlab downloads nothing")
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the published I3D is one
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError, OSError) as err:
            raise CheckpointError(f"{self.path} is not a TorchScript I3D ({str(err).splitlines()[0]}): "
                                  "pass StyleGAN-V's i3d_torchscript.pt") from None
        self.batch_size, self.num_frames, self.preprocess = int(batch_size), int(num_frames), preprocess

    def clips(self, videos: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The first ``num_frames`` frames of each video as uint8 (N, 3, T, H, W), the detector's layout."""
        v = _as_videos(videos)
        if v.shape[1] < self.num_frames:
            raise UserError(f"FVD needs clips of {self.num_frames} frames but the videos have {v.shape[1]}: "
                            f"generate at least {self.num_frames} frames (or set num_frames, not comparable "
                            "with published FVD)")
        return v[:, : self.num_frames].permute(0, 4, 1, 2, 3)  # (N, 3, T, H, W)

    @torch.inference_mode()
    def features(self, videos: np.ndarray | torch.Tensor) -> np.ndarray:
        """Detector features (N, D) float64 of uint8 videos (N, F, H, W[, C])."""
        clips = self.clips(videos)
        out = []
        for start in range(0, clips.shape[0], self.batch_size):
            x = clips[start : start + self.batch_size].to(self.device)
            if self.preprocess == "stylegan-v":
                feats = self.net(x, rescale=True, resize=True, return_features=True)
            else:
                x = resize_short_side_crop(x.float() / 255.0) * 2.0 - 1.0  # (n, 3, T, 224, 224) in [-1, 1]
                feats = self.net(x, rescale=False, resize=False, return_features=True)
            out.append(feats.double().cpu().numpy())  # (n, D)
        return np.concatenate(out) if out else np.zeros((0, 0))


def fvd_statistics(features: np.ndarray) -> FeatureStats:
    """StyleGAN-V's Gaussian fit: mean and *biased* covariance (divisor N) of features (N, D)."""
    mu, sigma = feature_statistics(features)  # divisor N - 1
    n = len(features)
    return FeatureStats(mu, sigma * ((n - 1) / n), n)


def frechet_video_distance(gen: np.ndarray | FeatureStats, ref: np.ndarray | FeatureStats) -> float:
    """FVD between two sets of detector features (N, D) or their ``fvd_statistics``."""
    g = gen if isinstance(gen, FeatureStats) else fvd_statistics(gen)
    r = ref if isinstance(ref, FeatureStats) else fvd_statistics(ref)
    return fid(g, r)


def compute_fvd(gen_videos: np.ndarray, real_videos: np.ndarray | FeatureStats, detector: I3DFeatures) -> float:
    """FVD of uint8 videos (N, F, H, W[, C]) against real videos or their precomputed ``fvd_statistics``.

    The field reports FVD on 2,048 clips per side (StyleGAN-V) or 256 (the original paper, "FVD-256").
    """
    if len(gen_videos) < 2:
        raise DataError(f"FVD needs at least 2 generated videos, got {len(gen_videos)}: sample more")
    ref = real_videos
    if not isinstance(ref, FeatureStats):
        if len(ref) < 2:
            raise DataError(f"FVD needs at least 2 real videos, got {len(ref)}: pass more")
        ref = fvd_statistics(detector.features(ref))
    return frechet_video_distance(detector.features(gen_videos), ref)


def frame_features(videos: np.ndarray, extractor, *, frame_stride: int = 1, progress: bool = False) -> np.ndarray:
    """Inception features (N * ceil(F / stride), 2048) of every ``frame_stride``-th frame of uint8 videos.

    ``extractor`` is an ``InceptionFeatures``; frames go through its usual preprocessing.
    """
    v = _as_videos(videos)[:, ::frame_stride].numpy()  # (N, F', H, W, 3)
    frames = v.reshape(-1, *v.shape[2:])  # (N*F', H, W, 3)
    batches = (frames[i : i + 256] for i in range(0, len(frames), 256))
    feats, _ = extractor.extract(batches, total=len(frames), progress=progress, desc="frame FID")
    return feats


def frame_fid(videos: np.ndarray, reference: np.ndarray | FeatureStats, extractor, *, frame_stride: int = 1) -> float:
    """Per-frame FID: frames of uint8 videos (N, F, H, W[, C]) as images, against reference Inception
    features (M, 2048) or ``FeatureStats`` (e.g. of real frames via ``frame_features``)."""
    feats = frame_features(videos, extractor, frame_stride=frame_stride)
    if len(feats) < 2:
        raise DataError(f"per-frame FID needs at least 2 frames, got {len(feats)}: sample more videos")
    return fid(feats, reference)

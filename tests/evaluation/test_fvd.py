"""FVD with a stand-in TorchScript detector (no I3D ships offline) against closed forms; per-frame FID."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard

from ditlab.errors import CheckpointError, ConfigError, DataError, UserError
from ditlab.evaluation.fvd import (
    I3DFeatures,
    compute_fvd,
    frame_features,
    frame_fid,
    frechet_video_distance,
    fvd_statistics,
    resize_short_side_crop,
)
from ditlab.evaluation.metrics import FeatureStats, fid

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the stand-in is TorchScript


class StandInI3D(torch.nn.Module):
    """StyleGAN-V's detector signature; features = the mean of each channel of each frame, (N, 3 * T)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            if x.dtype != torch.uint8:
                raise ValueError("rescale=True expects uint8 pixels")
            x = x.float() / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        if x.shape[-1] != 224 or x.shape[-2] != 224:
            raise ValueError("frames must reach the network at 224 x 224")
        if x.min() < -1.0 - 1e-5 or x.max() > 1.0 + 1e-5:
            raise ValueError("values must be in [-1, 1]")
        feats = x.mean(dim=(3, 4)).flatten(1)  # (N, 3, T) -> (N, 3T), channel-major
        return feats if return_features else feats.softmax(dim=1)


@pytest.fixture
def standin(tmp_path):
    path = tmp_path / "i3d_standin.pt"
    torch.jit.script(StandInI3D()).save(str(path))
    return path


def _constant_videos(levels: np.ndarray, size: int = 20) -> np.ndarray:
    """uint8 levels (N, T, 3) -> videos (N, T, size, size, 3) whose frames are flat colours."""
    return np.broadcast_to(levels[:, :, None, None, :], (*levels.shape[:2], size, size, 3)).astype(np.uint8).copy()


def _design(mean: np.ndarray, spread: np.ndarray, n: int = 64, t: int = 16) -> np.ndarray:
    """Levels (n, t, 3) whose detector features (mean, per channel and frame) have an exactly known Gaussian fit.

    Feature k of video i is mean_k + spread_k * H[i, k+1] (H a Hadamard matrix): the columns are
    orthogonal +-1 vectors with zero mean, so the biased covariance is exactly diag(spread²).
    """
    h = hadamard(n)[:, 1 : 1 + 3 * t]  # (n, 3t)
    levels = mean[None, :] + spread[None, :] * h  # (n, 3t), channel-major as the features
    return levels.reshape(n, 3, t).transpose(0, 2, 1).astype(np.uint8)  # (n, t, 3)


def test_fvd_matches_the_closed_form_for_diagonal_gaussians(standin):
    rng = np.random.default_rng(0)
    t = 4  # short clips keep the 224 x 224 resizes cheap; the 16-frame default is tested below
    d = 3 * t
    m1, m2 = rng.integers(60, 190, d), rng.integers(60, 190, d)
    s1, s2 = rng.integers(1, 50, d), rng.integers(1, 50, d)
    a, b = _constant_videos(_design(m1, s1, n=16, t=t)), _constant_videos(_design(m2, s2, n=16, t=t))
    # features f = v / 127.5 - 1: means (m / 127.5 - 1), standard deviations s / 127.5, independent.
    want = np.sum(((m1 - m2) / 127.5) ** 2 + ((s1 - s2) / 127.5) ** 2)
    for preprocess in ("stylegan-v", "videogpt"):
        det = I3DFeatures(standin, batch_size=7, num_frames=t, preprocess=preprocess)
        assert compute_fvd(a, b, det) == pytest.approx(want, rel=1e-5)
        stats = fvd_statistics(det.features(b))
        np.testing.assert_allclose(stats.sigma, np.diag((s2 / 127.5) ** 2), atol=1e-6)  # divisor N, exactly
        assert compute_fvd(a, stats, det) == pytest.approx(want, rel=1e-5)
    assert compute_fvd(a, a, det) == pytest.approx(0.0, abs=1e-6)


def test_biased_covariance_as_stylegan_v():
    feats = np.random.default_rng(1).normal(size=(10, 3))
    stats = fvd_statistics(feats)
    centred = feats - feats.mean(0)
    np.testing.assert_allclose(stats.sigma, centred.T @ centred / 10)  # E[x xᵀ] - mu muᵀ
    other = np.random.default_rng(2).normal(size=(12, 3)) + 1
    assert frechet_video_distance(feats, other) == pytest.approx(fid(stats, fvd_statistics(other)))
    assert frechet_video_distance(feats, other) != pytest.approx(fid(feats, other), rel=1e-6)  # not N - 1


def test_clip_layout_channels_and_first_16_frames(standin):
    det = I3DFeatures(standin)
    video = np.zeros((2, 20, 8, 12, 3), dtype=np.uint8)
    video[:, :, :, :, 0] = 255  # red
    video[:, 16:] = 77  # frames after the 16th do not count
    feats = det.features(video)  # (2, 48): 16 red values, then 16 green, then 16 blue
    assert feats.shape == (2, 48)
    np.testing.assert_allclose(feats[:, :16], 1.0, atol=1e-6)
    np.testing.assert_allclose(feats[:, 16:], -1.0, atol=1e-6)
    gray = np.full((2, 16, 9, 9, 1), 51, dtype=np.uint8)  # one channel: repeated to three
    np.testing.assert_allclose(det.features(gray), 51 / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(det.features(gray[..., 0]), 51 / 127.5 - 1, atol=1e-6)
    assert det.clips(video).shape == (2, 3, 16, 8, 12) and det.clips(video).dtype == torch.uint8


def test_videogpt_resize_is_short_side_then_centre_crop():
    x = torch.zeros(1, 1, 2, 10, 20)
    x[..., 4:16] = 1.0  # a bright band over the middle of a wide frame
    y = resize_short_side_crop(x)
    assert y.shape == (1, 1, 2, 224, 224)
    # short side 10 -> 224, long side 20 -> 448, then the central 224 columns, which sample source
    # columns 4.5 .. 14.5 only: all inside the band
    assert y.min() == pytest.approx(1.0)
    assert resize_short_side_crop(torch.ones(1, 3, 1, 300, 224)).shape == (1, 3, 1, 224, 224)


def test_bad_detector_and_inputs(tmp_path, standin):
    with pytest.raises(CheckpointError, match="DITLAB_I3D"):
        I3DFeatures(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(CheckpointError, match="not a TorchScript"):
        I3DFeatures(junk)
    with pytest.raises(ConfigError, match="stylegan-v"):
        I3DFeatures(standin, preprocess="tf")
    det = I3DFeatures(standin)
    short = np.zeros((3, 8, 16, 16, 1), dtype=np.uint8)
    with pytest.raises(UserError, match="16 frames"):
        det.features(short)
    assert I3DFeatures(standin, num_frames=8).features(short).shape == (3, 24)
    with pytest.raises(DataError, match="at least 2"):
        compute_fvd(np.zeros((1, 16, 8, 8), np.uint8), np.zeros((4, 16, 8, 8), np.uint8), det)
    with pytest.raises(ValueError, match="uint8"):
        det.features(np.zeros((2, 16, 8, 8), np.float32))


def test_default_path_comes_from_the_environment(monkeypatch, standin):
    monkeypatch.setenv("DITLAB_I3D", str(standin))
    assert I3DFeatures().path == standin


def test_frame_fid_feeds_every_frame_to_inception(inception):
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (2, 2, 16, 16, 1), dtype=np.uint8)
    feats = frame_features(videos, inception)
    assert feats.shape == (4, 2048)
    frames = np.repeat(videos.reshape(4, 16, 16, 1), 3, axis=-1)
    np.testing.assert_allclose(feats, inception.features(frames), atol=1e-9)
    ref = FeatureStats.from_features(feats)
    assert frame_fid(videos, ref, inception) == pytest.approx(fid(feats, ref))
    assert frame_features(videos, inception, frame_stride=2).shape == (2, 2048)

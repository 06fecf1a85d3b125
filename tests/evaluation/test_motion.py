"""The moving-digit demo's metrics: on real videos, on tracks with known answers, and on bad input."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ditlab.data.moving_mnist import DIRECTION_VECTORS, MovingMNIST, _render
from ditlab.errors import DataError
from ditlab.evaluation.motion import (
    bounce_steps,
    centre_of_mass,
    centred_crops,
    compass_direction,
    motion_statistics,
    video_digit_metrics,
)

if importlib.util.find_spec("ccexam") is None:  # its weights are read without importing it
    pytest.skip("the MNIST classifier package (ccexam) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def real_sets():
    # Module scope: built before the per-test private DITLAB_CACHE, so MNIST is read from the usual cache.
    samples = MovingMNIST("train", 200, seed=1)  # stands in for a perfect generator
    reference = MovingMNIST("train", 200, seed=0)
    return samples, reference


@pytest.fixture(scope="module")
def real_metrics(real_sets):
    samples, reference = real_sets
    v = samples.videos
    right = video_digit_metrics(v.frames, v.digit[:, 0], v.direction[:, 0], reference.videos.frames)
    k = 40  # the MNIST test statistics are cached by the first call: a small second call is cheap
    wobbly = v.frames[:k].copy()
    wobbly[:, 1::2] = np.roll(wobbly[:, 1::2], 1, axis=-1)  # odd frames one pixel to the right
    wrong = video_digit_metrics(v.frames[:k, ..., None], (v.digit[:k, 0] + 1) % 10, (v.direction[:k, 0] + 4) % 8,
                                reference.videos.frames[:k], smoothness_reference=wobbly)
    return right, wrong


def test_real_videos_meet_every_bar(real_metrics):
    m, _ = real_metrics
    assert m["num_videos"] == 200 and m["num_frames"] == 8
    assert m["frame_accuracy"] > 0.98 and m["video_digit_accuracy"] > 0.98  # measured 0.996 on 800
    assert m["digit_consistency"] == 1.0  # whole-pixel shifts: the same crop in every frame
    assert m["direction_accuracy"] == 1.0
    # Whole-pixel motion at constant speed: the COM track is exactly piecewise linear.
    assert m["smoothness"] == 0.0 and m["smoothness_real"] == 0.0 and m["smoothness_ratio"] == 1.0
    assert 0.5 < m["com_jitter"] < 1.5 and 0.1 < m["bounce_rate"] < 0.3  # bounces only
    assert m["empty_frames"] == 0.0
    assert 0.8 < m["frechet_ratio"] < 1.25 and m["frechet_floor"] > 0


def test_wrong_requests_score_zero(real_metrics):
    right, wrong = real_metrics
    assert wrong["frame_accuracy"] < 0.02 and wrong["video_digit_accuracy"] < 0.02
    assert wrong["direction_accuracy"] == 0.0  # the opposite direction, never the nearest sector
    assert right["frame_accuracy"] - wrong["frame_accuracy"] > 0.95
    # the smoothness reference can be other videos (e.g. through the autoencoder): here a 1-px zigzag,
    # whose second differences are 2 px (or excluded as reversals: bounces, and +-1 px steps of still axes)
    assert wrong["smoothness"] == 0.0 and 1.5 < wrong["smoothness_real"] <= 2.0 and wrong["smoothness_ratio"] == 0.0


def test_track_statistics_recover_the_generator(real_sets):
    v = real_sets[0].videos
    com = centre_of_mass(v.frames)
    st = motion_statistics(com)
    assert np.array_equal(st["direction"], v.direction[:, 0])
    fb = v.first_bounce[:, 0]
    # generator: first frame reached by a reversed step; detector: index of the reversed step
    assert np.array_equal(np.where(st["first_bounce"] < 0, -1, st["first_bounce"] + 1), fb)
    steps = np.diff(com, axis=1)
    np.testing.assert_allclose(steps[:, 0], DIRECTION_VECTORS[v.direction[:, 0]] * v.speed[:, :1], atol=1e-9)


def test_centre_of_mass_closed_form():
    frames = np.zeros((1, 3, 10, 12), dtype=np.uint8)
    frames[0, 0, 2, 3] = 200  # one pixel: the COM is that pixel
    frames[0, 1, 4, 5] = frames[0, 1, 4, 7] = 100  # two equal pixels: their midpoint
    frames[0, 1, 0, 0] = 20  # below the ink threshold (32): ignored
    com = centre_of_mass(frames)
    np.testing.assert_allclose(com[0, 0], [3, 2])
    np.testing.assert_allclose(com[0, 1], [6, 4])
    assert np.isnan(com[0, 2]).all()  # no ink


def test_crops_centre_the_digit_and_pad_with_black(real_sets):
    v = real_sets[0].videos
    com = centre_of_mass(v.frames)
    crops = centred_crops(v.frames, com)  # (N, F, 28, 28)
    assert crops.shape == (200, 8, 28, 28)
    # The digit's own COM rounds to (14, 14) in its box (MNIST's centring) for most digits: then the
    # crop is the MNIST digit, pixel for pixel.
    x, y = v.positions[:, 0, :, 0], v.positions[:, 0, :, 1]
    own = np.rint(com - np.stack([x, y], axis=-1))
    boxes = np.stack([v.frames[i, 0, y[i, 0] : y[i, 0] + 28, x[i, 0] : x[i, 0] + 28] for i in range(200)])
    centred = (own[:, 0] == 14).all(axis=-1)
    assert centred.mean() > 0.8
    assert np.array_equal(crops[centred, 0], boxes[centred])
    corner = np.zeros((1, 3, 20, 20), dtype=np.uint8)
    corner[0, :, 0:2, 0:2] = 255  # a blob in the top-left corner: its crop is mostly padding
    c = centred_crops(corner, centre_of_mass(corner))
    assert c.shape == (1, 3, 28, 28) and c.sum() == 4 * 255 * 3
    # COM (0.5, 0.5) rounds up to pixel 1, which lands on crop pixel 14: the blob fills crop rows/columns 13-14
    assert (c[0, 0, 13:15, 13:15] == 255).all() and c[0, 0, :13].max() == 0 and c[0, 0, :, :13].max() == 0


def test_compass_direction_sectors():
    angles = np.deg2rad(np.arange(8) * 45.0)
    unit = np.stack([np.sin(angles), -np.cos(angles)], axis=-1)  # 0 = up, clockwise, y down
    assert compass_direction(3 * unit).tolist() == list(range(8))
    assert np.array_equal(compass_direction(3 * unit), compass_direction(DIRECTION_VECTORS * 2.0))
    wobble = np.stack([np.sin(angles + 0.35), -np.cos(angles + 0.35)], axis=-1)  # +20 degrees: same sector
    assert compass_direction(wobble).tolist() == list(range(8))
    assert compass_direction(np.array([[0.3, 0.2], [np.nan, 1.0]])).tolist() == [-1, -1]  # too short / no COM


def test_bounce_detection_ignores_wobble_below_min_step():
    # x moves right 3 px per frame then reverses (a bounce at step 3); y wobbles by 0.6 px steps (no bounce).
    x = np.array([0, 3, 6, 9, 6, 3], dtype=float)
    y = 10 + 0.6 * (-1.0) ** np.arange(6) / 2
    com = np.stack([x, y], axis=-1)[None]  # (1, 6, 2)
    assert bounce_steps(com).tolist() == [[False, False, False, True, False]]
    st = motion_statistics(com)
    assert st["first_bounce"].tolist() == [3] and st["direction"].tolist() == [2]
    # second differences: |(0, +-1.2)| everywhere except at the bounce step, where it is |(-6, +-1.2)|
    np.testing.assert_allclose(st["accel"][0], [1.2, 1.2, np.hypot(6, 1.2), 1.2])
    assert st["smooth_mask"].tolist() == [[True, True, False, True]]


def test_smoothness_of_a_zigzag_track_is_known(real_sets):
    # A digit moving right at s px per frame, displaced by (-1)^t px: d_t = s - 2 (-1)^t, so every second
    # difference is 4 px and no step reverses (s >= 2): smoothness = COM jitter = 4 exactly.
    v = real_sets[0].videos
    digits = np.stack([v.frames[i, 0, y : y + 28, x : x + 28] for i, (x, y) in enumerate(v.start[:6, 0])])
    t = np.arange(8)
    pos = np.zeros((6, 8, 2), dtype=np.int64)
    for i, s in enumerate([2, 3, 2, 3, 2, 3]):
        pos[i, :, 0] = 2 + s * t + (-1) ** t + 1
        pos[i, :, 1] = 10
    videos = _render(digits, pos, 64)  # (6, 8, 64, 64)
    st = motion_statistics(centre_of_mass(videos))
    np.testing.assert_allclose(st["accel"], 4.0, atol=1e-9)
    assert st["smooth_mask"].all() and (st["direction"] == 2).all()


def test_bad_inputs():
    v = np.zeros((4, 8, 16, 16), dtype=np.uint8)
    with pytest.raises(DataError, match="one requested digit and direction per video"):
        video_digit_metrics(v, [1, 2], [0, 0, 0, 0], v)
    with pytest.raises(ValueError, match="uint8"):
        centre_of_mass(v.astype(np.float32))
    with pytest.raises(ValueError, match="one-channel"):
        centre_of_mass(np.zeros((4, 8, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="F >= 3"):
        centre_of_mass(np.zeros((4, 2, 16, 16), dtype=np.uint8))
    with pytest.raises(DataError, match="at least 2"):
        video_digit_metrics(v[:1], [1], [0], v)

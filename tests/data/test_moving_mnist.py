"""Moving MNIST: determinism, directions, bounces, start margins, options, the dataset contract."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ditlab.data.builtin import _load_mnist_arrays
from ditlab.data.moving_mnist import (
    CLASSIC,
    DIGIT_SIZE,
    DIRECTION_NAMES,
    DIRECTION_VECTORS,
    MovingMNIST,
    MovingMNISTSpec,
    _pick_digits,
    _render,
    class_name,
    generate_moving_digits,
)
from ditlab.errors import DataError, UserError


@pytest.fixture(scope="module")
def mnist():
    return _load_mnist_arrays()


@pytest.fixture(scope="module")
def videos(mnist):
    return generate_moving_digits(mnist["train_images"], mnist["train_labels"], 3000, seed=0)


def _com(frames: np.ndarray) -> np.ndarray:
    """Centre of mass (x, y) of uint8 frames (..., H, W)."""
    w = frames.astype(np.float64)
    ys, xs = np.arange(w.shape[-2]), np.arange(w.shape[-1])
    mass = w.sum(axis=(-2, -1))
    return np.stack([(w.sum(-2) * xs).sum(-1) / mass, (w.sum(-1) * ys).sum(-1) / mass], axis=-1)


def test_same_seed_same_videos_and_prefix_stable(mnist):
    imgs, labels = mnist["train_images"], mnist["train_labels"]
    a = generate_moving_digits(imgs, labels, 200, seed=3)
    b = generate_moving_digits(imgs, labels, 200, seed=3)
    c = generate_moving_digits(imgs, labels, 500, seed=3)
    d = generate_moving_digits(imgs, labels, 200, seed=4)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.start, b.start)
    assert np.array_equal(a.frames, c.frames[:200]) and np.array_equal(a.digit, c.digit[:200])
    assert not np.array_equal(a.frames, d.frames)
    e = generate_moving_digits(mnist["test_images"], mnist["test_labels"], 200, seed=3, split="test")
    assert not np.array_equal(a.direction, e.direction)  # train and test draw from different streams


def test_every_direction_moves_the_right_way(videos):
    # All 8 directions, both speeds occur; the first step is never a bounce (two-frame margin).
    assert set(videos.direction[:, 0]) == set(range(8)) and set(videos.speed[:, 0]) == {2, 3}
    step = videos.positions[:, 0, 1] - videos.positions[:, 0, 0]  # (N, 2)
    want = DIRECTION_VECTORS[videos.direction[:, 0]] * videos.speed[:, :1]
    assert np.array_equal(step, want)
    # ... and the pixels agree: the ink's centre of mass moves by exactly that step, up = -y.
    com = _com(videos.frames[:, :2])  # (N, 2, 2)
    np.testing.assert_allclose(com[:, 1] - com[:, 0], want, atol=1e-9)
    up = videos.direction[:, 0] == 0
    assert (com[up, 1, 1] < com[up, 0, 1]).all() and np.allclose(com[up, 1, 0], com[up, 0, 0])
    assert DIRECTION_NAMES[3] == "down-right" and tuple(DIRECTION_VECTORS[3]) == (1, 1)


def test_frames_are_the_digit_pasted_at_its_positions(videos, mnist):
    n = 50
    for i in range(n):
        for t in range(videos.frames.shape[1]):
            x, y = videos.positions[i, 0, t]
            frame = videos.frames[i, t]
            crop = frame[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE]
            assert crop.sum() == frame.sum()  # nothing outside the box
            if t == 0:
                first = crop
            assert np.array_equal(crop, first)  # the same digit, unresampled, in every frame
    # Training videos use training digits, and the label is that digit's MNIST label.
    x, y = videos.start[0, 0]
    crop = videos.frames[0, 0, y : y + DIGIT_SIZE, x : x + DIGIT_SIZE]
    match = np.flatnonzero((mnist["train_images"] == crop).all(axis=(1, 2)))
    assert len(match) >= 1 and mnist["train_labels"][match[0]] == videos.digit[0, 0]


def test_bounces_reflect_the_crossing_component(videos):
    pos = videos.positions[:, 0]  # (N, F, 2)
    limit = 48 - DIGIT_SIZE
    assert pos.min() >= 0 and pos.max() <= limit  # the digit never leaves the canvas
    disp = np.diff(pos, axis=1)  # (N, F-1, 2)
    # Speed is kept per axis: every step moves a moving axis by exactly s and a still axis not at all.
    moving = DIRECTION_VECTORS[videos.direction[:, 0]] != 0  # (N, 2)
    assert np.array_equal(np.abs(disp), np.broadcast_to((moving * videos.speed[:, :1])[:, None], disp.shape))
    fb = videos.first_bounce[:, 0]
    assert (fb >= 0).mean() > 0.5  # bounces are common on a 48-px canvas in 8 frames
    for i in np.flatnonzero(fb >= 0)[:500]:
        b = fb[i]
        before, after = disp[i, b - 2], disp[i, b - 1]  # steps into frame b-1 and into frame b
        flipped = before != after
        assert flipped.any() and np.array_equal(after[flipped], -before[flipped])
        # the flipped axis really would have crossed the edge without the bounce
        nxt = pos[i, b - 1] + before
        assert ((nxt < 0) | (nxt > limit))[flipped].all()
        assert (disp[i, : b - 1] == disp[i, 0]).all()  # clean steps until the bounce
    for i in np.flatnonzero(fb < 0)[:200]:
        assert (disp[i] == disp[i, 0]).all()


def test_start_positions_respect_the_two_frame_margin(videos):
    limit = 48 - DIGIT_SIZE
    unit = DIRECTION_VECTORS[videos.direction[:, 0]]
    s = videos.speed[:, 0]
    x0 = videos.start[:, 0]  # (N, 2)
    for axis in range(2):
        fwd, back = unit[:, axis] > 0, unit[:, axis] < 0
        assert (x0[fwd, axis] <= limit - 2 * s[fwd]).all() and (x0[back, axis] >= 2 * s[back]).all()
        # the allowed range is used up to its ends (uniform start, not a fixed one)
        assert x0[fwd & (s == 2), axis].min() == 0 and x0[fwd & (s == 2), axis].max() == limit - 4
        still = unit[:, axis] == 0
        assert x0[still, axis].min() == 0 and x0[still, axis].max() == limit
    fb = videos.first_bounce[:, 0]
    assert fb[fb >= 0].min() >= 3  # two clean steps before any bounce


def test_classic_setting_combines_two_digits_with_max(mnist):
    v = generate_moving_digits(mnist["train_images"], mnist["train_labels"], 40, CLASSIC, seed=1)
    assert v.frames.shape == (40, 20, 64, 64) and v.digit.shape == (40, 2) and v.positions.shape == (40, 2, 20, 2)
    # Re-render each digit alone from its recorded track; the video is their pixelwise max.
    imgs = mnist["train_images"]
    pick = _pick_digits(1, "train", len(imgs), 80).reshape(40, 2)
    alone = [_render(imgs[pick[:, k]], v.positions[:, k], 64) for k in range(2)]
    assert np.array_equal(v.frames, np.maximum(alone[0], alone[1]))
    ds = MovingMNIST("test", 10, CLASSIC)
    frames, meta = ds[0]
    assert frames.shape == (1, 20, 64, 64) and ds.num_classes == 0 and "label" not in meta
    assert len(meta["digit"]) == 2 and " and " in meta["caption"][0]
    with pytest.raises(DataError, match="no class label"):
        ds.labels()


def test_options_and_dataset_contract():
    ds = MovingMNIST("train", 64, seed=0)
    frames, meta = ds[5]
    assert frames.shape == (1, 8, 48, 48) and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1 and frames.min() == -1
    assert meta["label"] == meta["digit"] * 8 + meta["direction"] and 0 <= meta["label"] < 80
    name = DIRECTION_NAMES[meta["direction"]]
    art = "an" if meta["digit"] == 8 else "a"
    assert meta["caption"][0] == f"{art} {meta['digit']} moving {name}" and len(meta["caption"]) >= 3
    assert ds.class_names[meta["label"]] == f"{meta['digit']} {name}" and ds.num_classes == 80
    assert class_name(3 * 8 + 7) == "3 up-left"
    assert isinstance(meta["start"], list) and (meta["first_bounce"] is None or isinstance(meta["first_bounce"], int))
    u8, metas = ds.tensors()
    assert u8.shape == (64, 1, 8, 48, 48) and u8.dtype == torch.uint8 and metas[5] == meta
    assert torch.equal(u8[5].float() / 127.5 - 1, frames)
    assert torch.equal(ds.labels(), torch.tensor([m["label"] for m in metas]))
    custom = MovingMNIST("test", 8, num_frames=12, canvas=40, speeds=(1,))
    assert custom[0][0].shape == (1, 12, 40, 40) and set(custom.videos.speed.ravel()) == {1}
    assert MovingMNIST("test", 3, CLASSIC, num_digits=3).videos.digit.shape == (3, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"canvas": 32}, "at least 34 px"),
    ({"num_frames": 0}, "at least 1 frame"),
    ({"num_digits": 0}, "at least 1 digit"),
    ({"split": "val"}, "unknown split"),
    ({"num_videos": 0}, "at least 1 video"),
])
def test_bad_options_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        MovingMNIST(**{"num_videos": 4, **kwargs})


def test_generation_is_fast(mnist):
    # 20,000 videos (the demo's training set) in seconds: vectorised, no per-video Python loop.
    start = time.perf_counter()
    v = generate_moving_digits(mnist["train_images"], mnist["train_labels"], 20000, seed=0)
    elapsed = time.perf_counter() - start
    assert v.frames.shape == (20000, 8, 48, 48)
    assert elapsed < 10.0, f"generating 20,000 videos took {elapsed:.1f} s"


def test_spec_is_a_frozen_dataclass():
    assert MovingMNISTSpec().canvas == 48 and CLASSIC.num_frames == 20
    with pytest.raises(AttributeError):
        CLASSIC.canvas = 10  # type: ignore[misc]

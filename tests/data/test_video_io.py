"""Video files: GIF/MP4 round trips, grid videos, atomic writes, bad extensions."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("av")

from ditlab.data.moving_mnist import MovingMNIST  # noqa: E402
from ditlab.data.video_io import (  # noqa: E402
    read_video,
    rgb_to_gray,
    video_grid,
    write_video,
    write_video_grid,
)
from ditlab.errors import DataError, UserError  # noqa: E402


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _few_grays(shape, seed=0):
    levels = np.array([0, 37, 128, 200, 255], dtype=np.uint8)
    return levels[np.random.default_rng(seed).integers(0, len(levels), shape)]


def test_gif_is_lossless_for_gray_and_few_colours(tmp_path):
    gray = _few_grays((6, 24, 20, 1))
    gray[2] = gray[1]  # repeated frames stay separate frames
    path = write_video(tmp_path / "g.gif", gray, fps=10)
    back = read_video(path, channels=1)
    assert back.shape == gray.shape and np.array_equal(back, gray)
    rgb = read_video(path)
    assert rgb.shape == (6, 24, 20, 3) and np.array_equal(rgb, np.repeat(gray, 3, axis=-1))
    # any 8-bit gray, not just a few levels: the GIF is written as 8-bit gray
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), (3, 16, 16, 1))
    assert np.array_equal(read_video(write_video(tmp_path / "r.gif", ramp), channels=1), ramp)
    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30], [0, 0, 0]], dtype=np.uint8)
    video = colours[np.random.default_rng(1).integers(0, 4, (5, 16, 18))]  # (5, 16, 18, 3)
    assert np.array_equal(read_video(write_video(tmp_path / "c.gif", video)), video)


def test_gif_with_many_colours_keeps_shape_and_is_close(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 16, 16, 3))
    video = np.clip(base + rng.integers(-20, 20, (4, 16, 16, 3)), 0, 255).astype(np.uint8)  # > 256 colours
    back = read_video(write_video(tmp_path / "m.gif", video))
    assert back.shape == video.shape and _psnr(back, video) > 25


def test_mp4_round_trip_within_a_psnr_bound(tmp_path):
    frames = MovingMNIST("test", 4).videos.frames[..., None]  # (4, 8, 48, 48, 1)
    grid = video_grid(frames)  # (8, 102, 102, 1)
    path = write_video(tmp_path / "v.mp4", grid, fps=8)
    back = read_video(path, channels=1)
    assert back.shape == grid.shape
    assert _psnr(back, grid) > 35  # measured 50 dB with libx264 crf 18
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == 8 and stream.codec_context.name in ("h264", "mpeg4")
    assert read_video(path, max_frames=3).shape == (3, 102, 102, 3)


def test_mp4_odd_sizes_are_padded_to_even(tmp_path):
    video = np.full((3, 15, 21, 3), 200, dtype=np.uint8)
    back = read_video(write_video(tmp_path / "odd.mp4", video))
    assert back.shape == (3, 16, 22, 3)
    # the image stays at the top left (lossy: a few levels of ringing next to the black pad)
    err = np.abs(back[:, :15, :21].astype(int) - 200)
    assert err.max() <= 8 and err.mean() < 1 and back[:, 15:].max() <= 20 and back[:, :, 21:].max() <= 20


def test_video_grid_tiles_each_frame_like_make_grid():
    from ditlab.sampling.outputs import make_grid

    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (5, 3, 6, 7, 3), dtype=np.uint8)
    grid = video_grid(videos, ncols=2)
    assert grid.shape == (3, 3 * 8 + 2, 2 * 9 + 2, 3)
    for t in range(3):
        assert np.array_equal(grid[t], make_grid(videos[:, t], ncols=2))
    assert video_grid(videos[..., 0]).shape == (3, 2 * 8 + 2, 3 * 9 + 2, 1)  # (N, F, H, W): one channel


def test_write_grid_and_bad_extensions(tmp_path):
    videos = _few_grays((4, 2, 8, 8, 1))
    out = write_video_grid(tmp_path / "sub" / "grid.gif", videos, fps=4)
    assert read_video(out, channels=1).shape == (2, 2 * 10 + 2, 2 * 10 + 2, 1)
    for name in ("grid.avi", "grid.webm", "grid", "grid.png"):
        with pytest.raises(UserError, match=r"\.gif or \.mp4"):
            write_video(tmp_path / name, videos[0])
        assert not (tmp_path / name).exists()
    with pytest.raises(UserError, match="grid.avi"):
        write_video_grid(tmp_path / "grid.avi", videos)
    with pytest.raises(UserError, match="positive"):
        write_video(tmp_path / "x.gif", videos[0], fps=0)
    (tmp_path / "dir.gif").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        write_video(tmp_path / "dir.gif", videos[0])
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.gif", videos[0].astype(np.float32))


def test_write_is_atomic(tmp_path, monkeypatch):
    import ditlab.data.video_io as vio

    path = tmp_path / "a.gif"
    write_video(path, _few_grays((2, 8, 8, 1)))
    before = path.read_bytes()

    def boom(tmp, frames, fps, ext):
        with open(tmp, "wb") as f:
            f.write(b"half a video")  # the encoder dies after writing part of the file
        raise RuntimeError("encoder died")

    monkeypatch.setattr(vio, "_encode", boom)
    with pytest.raises(RuntimeError):
        write_video(path, _few_grays((3, 8, 8, 1), seed=5))
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["a.gif"]  # no temporary left behind


def test_read_errors_are_data_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(DataError, match="bad.mp4"):
        read_video(bad)
    with pytest.raises(DataError):
        read_video(tmp_path / "missing.mp4")


def test_rgb_to_gray_is_exact_on_gray():
    g = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    assert np.array_equal(rgb_to_gray(np.repeat(g, 3, axis=-1)), g)

"""Reading and writing short videos with PyAV (its wheel ships FFmpeg's libraries), and grid videos.

* ``.gif``: FFmpeg's GIF encoder. Grayscale videos are written as 8-bit gray (exact); colour videos
  with at most 256 distinct colours get an exact palette, others one palette for the whole video
  (Pillow's median cut, no dithering). Frame delays are in 1/100 s, so fps is rounded to that.
* ``.mp4``: H.264 (libx264, ``crf`` 18, yuv420p: plays everywhere) or, where the FFmpeg build lacks
  libx264, MPEG-4 part 2. yuv420p needs even sides: odd sizes are padded with black on the right
  and bottom.

Files are written under a temporary name in the target folder and renamed into place, so a crash
never leaves a half-written video under the requested name.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ditlab.errors import DataError, UserError
from ditlab.files import atomic_write

VIDEO_WRITE_EXTENSIONS = (".gif", ".mp4")


def _av():
    try:
        import av
    except ImportError as err:
        raise UserError("video files need PyAV: run `pip install av` (or `pip install ditlab[video]`)") from err
    return av


def video_extension(path: str | os.PathLike) -> str:
    """The lower-case extension of ``path`` if ditlab can write it; ``UserError`` naming the valid ones if not."""
    ext = Path(path).suffix.lower()
    if ext not in VIDEO_WRITE_EXTENSIONS:
        shown = ext or "no extension"
        raise UserError(f"cannot write a video as '{shown}' ({path}): end the file name in "
                        f"{' or '.join(VIDEO_WRITE_EXTENSIONS)}")
    return ext


def _check_frames(frames: np.ndarray) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]  # (F, H, W) -> (F, H, W, 1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[0] < 1:
        raise ValueError(f"video frames must be (F, H, W, C) with C = 1 or 3 and F >= 1, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _palette(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames (F, H, W, 3) -> palette indices (F, H, W) and an ARGB palette (256, 4) for pal8."""
    flat = frames.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.uint32) << 16) | (flat[:, 1].astype(np.uint32) << 8) | flat[:, 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    if len(colours) <= 256:  # exact
        rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.uint8)
        indices = inverse.reshape(frames.shape[:3]).astype(np.uint8)
    else:  # one median-cut palette for the whole video, so colours do not flicker between frames
        from PIL import Image

        f, h, w, _ = frames.shape
        montage = Image.fromarray(frames.reshape(f * h, w, 3))
        quant = montage.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        indices = np.asarray(quant, dtype=np.uint8).reshape(f, h, w)
        rgb = np.asarray(quant.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[: len(rgb), 0] = 255  # alpha
    palette[: len(rgb), 1:] = rgb
    return indices, palette


def _mp4_codec(av) -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except ValueError:  # av.codec.codec.UnknownCodecError: not in this FFmpeg build
            continue
    raise UserError("this FFmpeg build has no H.264 or MPEG-4 encoder: write a .gif instead")


def _encode(path: str, frames: np.ndarray, fps: float, ext: str) -> None:
    av = _av()
    f, h, w, c = frames.shape
    rate = Fraction(fps).limit_denominator(1001)  # 8 -> 8/1, 29.97 -> 30000/1001
    fmt = {".gif": "gif", ".mp4": "mp4"}[ext]
    with av.open(path, mode="w", format=fmt) as out:
        if ext == ".gif":
            stream = out.add_stream("gif", rate=rate)
            stream.width, stream.height = w, h
            if c == 1:
                stream.pix_fmt = "gray"
                video = [av.VideoFrame.from_ndarray(fr[..., 0], format="gray") for fr in frames]
            else:
                stream.pix_fmt = "pal8"
                indices, palette = _palette(frames)
                video = [av.VideoFrame.from_ndarray((ix, palette), format="pal8") for ix in indices]
        else:
            if c == 1:
                frames = np.repeat(frames, 3, axis=-1)
            pad_h, pad_w = h % 2, w % 2
            if pad_h or pad_w:
                frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
            codec = _mp4_codec(av)
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height = w + pad_w, h + pad_h
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18", "preset": "medium"}
            else:
                stream.bit_rate = max(2_000_000, 8 * (w * h) * int(math.ceil(fps)))
            video = [av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24") for fr in frames]
        for frame in video:
            out.mux(stream.encode(frame))
        out.mux(stream.encode())  # flush the encoder


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write uint8 frames (F, H, W, C), C = 1 or 3, as a GIF or MP4 chosen by the extension; atomic.

    Raises ``UserError`` for an extension the writer cannot produce (naming ``.gif`` and ``.mp4``).
    """
    path = Path(path)
    ext = video_extension(path)
    if not fps > 0:
        raise UserError(f"frames per second must be positive, got {fps}: pass --fps 8 or similar")
    frames = _check_frames(frames)
    if path.is_dir():
        raise UserError(f"output '{path}' is a folder: give a file name ending in "
                        f"{' or '.join(VIDEO_WRITE_EXTENSIONS)}")
    return atomic_write(path, lambda tmp: _encode(str(tmp), frames, float(fps), ext))


def read_video(path: str | os.PathLike, channels: int = 3, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file (anything this FFmpeg reads: mp4, webm, avi, gif, ...) -> uint8 (F, H, W, C).

    ``channels=1`` returns BT.601 luma (exact for gray frames). Raises ``DataError`` when the file
    cannot be decoded or holds no video frames.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    av = _av()
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} holds no video stream: pass a video file")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"cannot decode video {path} ({err}): check the file or remove it") from err
    if not frames:
        raise DataError(f"{path} holds no decodable frames: check the file or remove it")
    video = np.stack(frames)  # (F, H, W, 3)
    if channels == 1:
        video = rgb_to_gray(video)
    return video


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> (..., 1) with BT.601 luma weights (0.299, 0.587, 0.114): exact where R = G = B."""
    y = frames[..., :1].astype(np.float32) * 0.299 + frames[..., 1:2] * 0.587 + frames[..., 2:3] * 0.114
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def video_grid(videos: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 videos (N, F, H, W, C) into one video (F, rows*(H+pad)+pad, cols*(W+pad)+pad, C).

    Every frame is laid out as ``ditlab.sampling.outputs.make_grid`` lays out images: ``ceil(sqrt(N))``
    columns by default, row-major, black borders of ``pad`` px.
    """
    videos = np.asarray(videos)
    if videos.ndim == 4:
        videos = videos[..., None]
    if videos.ndim != 5:
        raise ValueError(f"videos must be (N, F, H, W, C), got shape {videos.shape}")
    n, f, h, w, c = videos.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.zeros((f, nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=videos.dtype)
    for i in range(n):
        r, col = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y0 : y0 + h, x0 : x0 + w] = videos[i]
    return grid


def write_video_grid(path: str | os.PathLike, videos: np.ndarray, fps: float = 8.0, ncols: int | None = None) -> Path:
    """Write several uint8 videos (N, F, H, W, C) as one grid video (see ``video_grid``)."""
    video_extension(path)  # fail on the name before tiling anything
    return write_video(path, video_grid(videos, ncols), fps)

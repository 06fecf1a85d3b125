"""User videos from a folder: video files (decoded with PyAV) or folders of frames, one clip per video.

Layout, as for image folders: one subfolder per class (labels by sorted name), or everything in the
folder itself (unconditional). A *clip* is a video file (``.mp4 .webm .avi .gif .mov .mkv .m4v``) or a
folder holding image frames directly (sorted by name, numbers compared as numbers: ``f2`` before
``f10``). So ``root/cat/a.mp4`` and ``root/cat/clip1/0001.png`` are both clips of class ``cat``, and a
root of frame folders only (``root/clip1/*.png``) is an unconditional set of clips.

Each item is one clip of ``num_frames`` frames taken every ``frame_stride`` frames, from the start of
the video (or from a random start with ``random_offset``), every frame ADM-centre-cropped to
``image_size`` (``transforms.center_crop_arr``, as image folders), as ``(frames float (C, F, H, W) in
[-1, 1], meta)``; ``meta`` is ``{"label": k}`` with class folders and ``{}`` without.

Videos are probed when the dataset is built: files PyAV cannot open are skipped as *unreadable*, clips
with fewer than ``(num_frames - 1) * frame_stride + 1`` frames as *short*; both are counted, listed and
reported in one warning. A video that fails later, while decoding, makes ``__getitem__`` return
``None`` (the image folder's convention: the collate drops it) and joins the lists, across DataLoader
workers.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import warnings
from multiprocessing.context import get_spawning_popen
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ditlab.data.folder import IMAGE_EXTENSIONS
from ditlab.data.transforms import center_crop_arr, to_mode
from ditlab.errors import DataError

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".avi", ".gif", ".mov", ".mkv", ".m4v"})
FRAME_EXTENSIONS = IMAGE_EXTENSIONS - {".gif"}  # a .gif is a video here
_OK, _UNREADABLE, _SHORT = 0, 1, 2


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _visible(names) -> list[str]:
    return sorted((n for n in names if not n.startswith(".")), key=_natural_key)


def _frame_files(folder: Path) -> list[str]:
    """Image files directly inside ``folder``, in natural order (empty when it is not a frame folder)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [str(folder / n) for n in _visible(names)
            if os.path.splitext(n)[1].lower() in FRAME_EXTENSIONS and (folder / n).is_file()]


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What a broken video or frame raises: PyAV's FFmpeg errors, Pillow's, and OS errors."""
    import av

    return (av.error.FFmpegError, OSError, ValueError, SyntaxError, UnidentifiedImageError,
            Image.DecompressionBombError)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file() and not path.name.startswith(".")


def _scan(folder: Path) -> list[str]:
    """Every clip below ``folder``: video files and folders that hold frames directly (not searched further)."""
    clips = []
    for name in _visible(os.listdir(folder)):
        path = folder / name
        if path.is_dir():
            clips.extend([str(path)] if _frame_files(path) else _scan(path))
        elif _is_video(path):
            clips.append(str(path))
    return clips


def count_frames(path: str) -> int:
    """Frames in a video file (container header, else by counting packets) or in a frame folder."""
    if os.path.isdir(path):
        return len(_frame_files(Path(path)))
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise DataError(f"{path} holds no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode(path: str, indices: list[int]) -> list[Image.Image]:
    """The frames at ``indices`` (ascending) of a video file or frame folder, as PIL images."""
    if os.path.isdir(path):
        files = _frame_files(Path(path))
        out = []
        for i in (i for i in indices if i < len(files)):  # frames deleted since the probe: a short clip
            with Image.open(files[i]) as im:
                im.load()
                out.append(im.copy())
        return out
    import av

    wanted, out = set(indices), []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out.append(frame.to_image())
                if len(out) == len(indices):
                    break
    return out


class VideoFolderDataset(torch.utils.data.Dataset):
    """Clips from ``root``; items are (frames float (C, F, H, W) in [-1, 1], meta) or ``None``.

    Args:
        root: a folder of videos or frame folders, optionally one subfolder per class.
        image_size: side of the square frames (ADM centre crop + resize).
        num_frames: frames per clip.
        frame_stride: take every ``frame_stride``-th frame of the video.
        channels: 1 (grayscale) or 3 (RGB).
        random_offset: start each clip at a random frame (torch's global RNG) instead of the first.
        flip: random horizontal flips of whole clips.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, *, num_frames: int = 16, frame_stride: int = 1,
                 channels: int = 3, random_offset: bool = False, flip: bool = True):
        try:
            import av  # noqa: F401
        except ImportError as err:
            raise DataError("video folders need PyAV: run `pip install av` (or `pip install ditlab[video]`)") from err
        root = Path(root).expanduser()
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise DataError(f"video folder {root} {what}: pass a folder of videos or of frame folders")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        if num_frames < 1 or frame_stride < 1:
            raise DataError(f"clip length and frame stride must be positive, got {num_frames} and {frame_stride}")
        entries = [root / e for e in _visible(os.listdir(root))]
        loose = [e for e in entries if _is_video(e) or (e.is_dir() and _frame_files(e))]
        class_dirs = [e for e in entries if e.is_dir() and not _frame_files(e) and _scan(e)]
        if class_dirs and loose:
            names = ", ".join(e.name for e in class_dirs[:3])
            raise DataError(f"{root} holds both class subfolders ({names}) and {len(loose)} loose clips: "
                            "move the loose clips into a class subfolder, or use a flat folder")
        candidates: list[tuple[str, int]] = []
        if class_dirs:
            for label, d in enumerate(class_dirs):
                candidates.extend((c, label) for c in _scan(d))
            self.class_names = [d.name for d in class_dirs]
        else:
            candidates = [(c, 0) for c in _scan(root)]
            self.class_names = []
        if not candidates:
            raise DataError(f"no videos found in {root}: add .mp4/.webm/.avi/.gif files or folders of frames "
                            "(one subfolder per class, or all in the folder itself)")
        self.span = (num_frames - 1) * frame_stride + 1  # frames of the source a clip covers
        self.unreadable: list[str] = []
        self.short: list[str] = []
        clips, labels, lengths = [], [], []
        for path, label in candidates:
            try:
                n = count_frames(path)
            except (*_decode_errors(), DataError):
                self.unreadable.append(path)
                continue
            if n == 0:
                self.unreadable.append(path)
            elif n < self.span:
                self.short.append(path)
            else:
                clips.append(path)
                labels.append(label)
                lengths.append(n)
        if not clips:
            raise DataError(self._nothing_usable(root, len(candidates), num_frames, frame_stride))
        self.root, self.files, self.lengths = root, clips, lengths
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.num_classes = len(self.class_names)
        self.image_size, self.channels = int(image_size), channels
        self.num_frames, self.frame_stride = int(num_frames), int(frame_stride)
        self.random_offset, self.flip = random_offset, flip
        self.name = root.name
        # One flag per clip in shared memory (_UNREADABLE / _SHORT), set by whichever DataLoader worker
        # finds the problem, so the main process sees every failure without extra messages.
        self._status = multiprocessing.RawArray("b", len(clips))
        if self.unreadable or self.short:
            warnings.warn(f"{self.report()}; training on the other {len(clips)}", stacklevel=2)

    def _nothing_usable(self, root: Path, found: int, num_frames: int, stride: int) -> str:
        if len(self.unreadable) == found:
            return (f"none of the {found} videos in {root} could be read (e.g. {self.unreadable[0]}): "
                    "re-encode them as .mp4 (H.264) or export them as folders of frames")
        return (f"no clip in {root} has {self.span} frames ({num_frames} frames x stride {stride}; "
                f"{len(self.short)} too short, {len(self.unreadable)} unreadable): "
                "lower the clip length or frame stride")

    def __len__(self) -> int:
        return len(self.files)

    def frame_indices(self, index: int, start: int = 0) -> list[int]:
        return list(range(start, start + self.span, self.frame_stride))

    def load(self, index: int, start: int = 0) -> torch.Tensor:
        """Decode clip ``index`` from frame ``start`` -> float (C, F, H, W) in [-1, 1], never flipped.

        Raises ``OSError``/``ValueError`` for a broken video, ``DataError`` when it has too few frames.
        """
        images = _decode(self.files[index], self.frame_indices(index, start))
        if len(images) < self.num_frames:
            raise DataError(f"{self.files[index]} ended after {len(images)} of the {self.num_frames} frames")
        arrays = [center_crop_arr(to_mode(im, self.channels), self.image_size) for im in images]
        clip = np.stack(arrays)  # (F, H, W) or (F, H, W, C)
        if clip.ndim == 3:
            clip = clip[..., None]
        return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | None:
        start = 0
        if self.random_offset and self.lengths[index] > self.span:
            start = int(torch.randint(0, self.lengths[index] - self.span + 1, ()))
        try:
            frames = self.load(index, start)
        except DataError as err:
            self._record(index, _SHORT, err)
            return None
        except _decode_errors() as err:
            self._record(index, _UNREADABLE, err)
            return None
        if self.flip and torch.rand(()) < 0.5:
            frames = frames.flip(-1)  # the whole clip, so motion stays consistent
        return frames, ({"label": int(self.labels[index])} if self.num_classes else {})

    def metas(self) -> list[dict]:
        """Every clip's metadata (``{"label": k}`` with class folders, ``{}`` without), nothing decoded."""
        return [{"label": int(y)} for y in self.labels.tolist()] if self.num_classes else [{}] * len(self)

    def _record(self, index: int, status: int, err: Exception) -> None:
        if not self._status[index]:
            self._status[index] = status
            kind = "unreadable" if status == _UNREADABLE else "too short"
            warnings.warn(f"skipping {kind} video {self.files[index]}: {err}", stacklevel=3)

    def bad_files(self) -> list[str]:
        """Every video that could not be decoded (when built or later, in any worker), sorted."""
        later = [f for f, s in zip(self.files, self._status, strict=True) if s == _UNREADABLE]
        return sorted(self.unreadable + later)

    def short_files(self) -> list[str]:
        """Every clip with fewer frames than one item needs, sorted."""
        later = [f for f, s in zip(self.files, self._status, strict=True) if s == _SHORT]
        return sorted(self.short + later)

    def report(self) -> str:
        """One line: how many videos were skipped and why."""
        bad, short = self.bad_files(), self.short_files()
        parts = []
        if bad:
            parts.append(f"{len(bad)} unreadable (e.g. {bad[0]})")
        if short:
            parts.append(f"{len(short)} shorter than {self.span} frames (e.g. {short[0]})")
        return "skipped " + " and ".join(parts) + " videos" if parts else "no videos skipped"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # As ImageFolderDataset: spawned workers share the flags; any other pickling gets a copy.
        if get_spawning_popen() is None:
            state["_status"] = bytes(self._status)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["_status"], bytes):
            flags = state["_status"]
            state["_status"] = multiprocessing.RawArray("b", len(flags))
            state["_status"][:] = list(flags)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"VideoFolderDataset({str(self.root)!r}, n={len(self)}, classes={self.num_classes}, "
                f"frames={self.num_frames}, stride={self.frame_stride}, size={self.image_size}, "
                f"channels={self.channels})")

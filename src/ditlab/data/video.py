"""Video datasets behind ``build_dataset``: built-in moving digits and folders of videos, and their frames.

A video dataset yields ``(frames float (C, F, H, W) in [-1, 1], meta)`` and carries ``num_frames``
besides what image datasets carry (``num_classes``, ``class_names``, ``channels``, ``image_size``,
``name``, ``metas()``). ``video_frames`` presents the frames of any video dataset as an image dataset:
an image autoencoder is trained on them, and its scaling factor measured on them.
"""
from __future__ import annotations

import os

import torch

from ditlab.errors import DataError

VIDEO_BUILTINS: dict[str, str] = {
    "moving-mnist": "MNIST digits moving over a black canvas: 48x48 (--image_size), 8 frames, one digit, "
                    "8 directions; 80 classes (digit x 8 + direction)",
    "moving-mnist-classic": "Srivastava et al.'s moving MNIST: 64x64, 20 frames, two digits (unconditional)",
}


def is_video_dataset(dataset) -> bool:
    """Items are clips (C, F, H, W) rather than images."""
    return int(getattr(dataset, "num_frames", 0) or 0) > 0


def build_video_dataset(spec: str | os.PathLike, image_size: int, *, split: str = "train", flip: bool | None = None,
                        channels: int | None = None, num_frames: int | None = None, frame_stride: int = 1,
                        num_digits: int | None = None, num_videos: int | None = None):
    """``moving-mnist`` / ``moving-mnist-classic`` (canvas = ``image_size``) or a folder of videos.

    Args:
        num_frames: frames per clip; default 8 for moving-mnist, 20 for the classic setting; required
            for folders.
        frame_stride: folders: take every ``frame_stride``-th frame.
        num_digits, num_videos: built-in moving digits: digits per video (default 1, classic 2) and
            number of videos (default 20,000 train / 2,000 test).
    """
    from ditlab.data.moving_mnist import CLASSIC, DEFAULT, MovingMNIST

    if isinstance(spec, str) and spec in VIDEO_BUILTINS:
        if flip:
            raise DataError("moving digits cannot be flipped (a mirrored digit is no digit, and left would "
                            "become right): drop --flip")
        if channels not in (None, 1):
            raise DataError(f"moving digits are grayscale (1 channel), not {channels}: use an autoencoder of "
                            "1-channel images (e.g. --autoencoder auto)")
        base = CLASSIC if spec == "moving-mnist-classic" else DEFAULT
        return MovingMNIST(split, num_videos or None, base, canvas=image_size, num_frames=num_frames or None,
                           num_digits=num_digits or None)
    if not num_frames:
        raise DataError(f"{spec} is read as a folder of videos only with a clip length: pass --num_frames N")
    from ditlab.data.video_folder import VideoFolderDataset

    return VideoFolderDataset(spec, image_size, num_frames=num_frames, frame_stride=frame_stride,
                              channels=3 if channels is None else channels, flip=True if flip is None else flip)


class _Frames(torch.utils.data.Dataset):
    """What the frame views share: an image dataset's attributes, no labels, never flipped."""

    def __init__(self, videos):
        self.videos = videos
        self.name = f"{getattr(videos, 'name', 'videos')}-frames"
        self.channels = videos.channels
        self.image_size = videos.image_size
        self.num_classes = 0
        self.class_names: list[str] = []
        self.flip = False

    def bad_files(self) -> list[str]:
        return self.videos.bad_files()

    def metas(self) -> list[dict]:
        return [{}] * len(self)


class InMemoryFrames(_Frames):
    """Every frame of an in-memory video dataset as an image; ``tensors()`` is a view (no copy)."""

    def __init__(self, videos):
        super().__init__(videos)
        clips = videos.tensors()[0]  # (N, C, F, H, W) uint8
        n, c, f, h, w = clips.shape
        self._frames = clips.transpose(1, 2).reshape(n * f, c, h, w)  # (N*F, C, H, W)

    def __len__(self) -> int:
        return self._frames.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self._frames[index].float().div(127.5).sub(1.0), {}

    def tensors(self) -> tuple[torch.Tensor, list[dict]]:
        """Every frame, uint8 (N*F, C, H, W)."""
        return self._frames, []


class ClipFrames(_Frames):
    """Item ``i``: one random frame (torch's RNG) of clip ``i`` of a folder of videos (``None`` if unreadable)."""

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | None:
        item = self.videos[index]
        if item is None:
            return None
        clip = item[0]  # (C, F, H, W)
        return clip[:, int(torch.randint(0, clip.shape[1], ()))], {}


def video_frames(videos) -> InMemoryFrames | ClipFrames:
    """The frames of a video dataset as an image dataset (in memory when the videos are)."""
    return InMemoryFrames(videos) if hasattr(videos, "tensors") else ClipFrames(videos)

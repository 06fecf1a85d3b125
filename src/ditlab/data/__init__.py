"""ditlab.data: built-in datasets, user image folders, transforms.

``build_dataset(spec, image_size)`` is the one entry point: ``spec`` is a built-in name
(see ``BUILTIN_DATASETS``) or a path to an image folder. Every dataset yields
``(image float (C, H, W) in [-1, 1], meta dict)`` (``{"label": k}``, ``{"caption": [...]}`` or ``{}``),
has ``metas()`` (every item's meta without decoding images) and carries ``num_classes``, ``class_names``,
``channels``, ``image_size`` and ``name``; captioned datasets also ``captioned = True``. Video datasets
(``moving-mnist``, ``moving-mnist-classic``, or a folder with ``num_frames``) yield ``(frames (C, F, H, W), meta)``
and carry ``num_frames`` (``ditlab.data.video``).
"""
from __future__ import annotations

import os

from ditlab.data.builtin import BUILTIN_DATASETS, BuiltinDataset, build_builtin, cache_dir
from ditlab.data.captioned import CAPTIONED_BUILTINS, CaptionedImageFolder, build_captioned_mnist, has_captions
from ditlab.data.folder import Batch, ImageFolderDataset, collate_skip_bad
from ditlab.data.transforms import center_crop_arr, to_mode
from ditlab.data.video import VIDEO_BUILTINS, build_video_dataset, is_video_dataset, video_frames
from ditlab.errors import DataError

__all__ = [
    "BUILTIN_DATASETS",
    "Batch",
    "BuiltinDataset",
    "CAPTIONED_BUILTINS",
    "CaptionedImageFolder",
    "ImageFolderDataset",
    "build_dataset",
    "cache_dir",
    "center_crop_arr",
    "collate_skip_bad",
    "to_mode",
    "VIDEO_BUILTINS",
    "build_video_dataset",
    "is_video_dataset",
    "video_frames",
]


def build_dataset(
    spec: str | os.PathLike,
    image_size: int,
    *,
    split: str = "train",
    flip: bool | None = None,
    channels: int | None = None,
    **video: int | None,
):
    """A dataset from a built-in name (``"mnist"``, ``"digits"``, ``"mnist-captions"``, ``"moving-mnist"``...)
    or an image-folder path.

    Args:
        spec: built-in name, or a folder with one subfolder per class (labels by sorted folder
            name) or a flat folder of images (unconditional, ``num_classes == 0``); a folder with
            ``metadata.jsonl`` or ``NAME.txt`` captions is a ``CaptionedImageFolder``.
        image_size: side of the square training images.
        split: ``"train"`` or ``"test"`` for built-ins; folders ignore it.
        flip: random horizontal flips; default on for folders, off for digits (a flipped 3 is no 3).
        channels: 1 or 3; default 1 for built-ins, 3 for folders.
        video: ``num_frames``, ``frame_stride``, ``num_digits``, ``num_videos``: a video dataset
            (``build_video_dataset``) for the built-in moving digits, or a folder when ``num_frames`` is set.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise DataError(f"image size must be a positive integer, got {image_size!r}")
    if (isinstance(spec, str) and spec in VIDEO_BUILTINS) or video.get("num_frames"):
        options = {k: v for k, v in video.items() if v is not None}
        return build_video_dataset(spec, image_size, split=split, flip=flip, channels=channels, **options)
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        return build_builtin(spec, image_size, split=split, flip=flip, channels=channels)
    if isinstance(spec, str) and spec in CAPTIONED_BUILTINS:
        return build_captioned_mnist(spec, image_size, split=split, flip=flip, channels=channels)
    if isinstance(spec, str) and not spec.strip():
        raise DataError(f"empty dataset name: pass {', '.join(map(repr, BUILTIN_DATASETS))} or an image folder path")
    folder = CaptionedImageFolder if has_captions(spec) else ImageFolderDataset  # metadata.jsonl / NAME.txt
    return folder(spec, image_size, flip=True if flip is None else flip, channels=3 if channels is None else channels)

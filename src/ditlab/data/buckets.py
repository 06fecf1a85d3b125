"""Aspect-ratio buckets for image folders (as SDXL and PixArt-α train): a fixed list of (H, W) sizes of about
the same area, every image cropped to the bucket nearest its own aspect ratio, every batch from one bucket.

    buckets = parse_buckets("auto", image_size=256, multiple=16)   # [(H, W), ...], square first
    dataset = BucketedImageFolder(folder, buckets)                  # items cropped to their bucket
    dataset.assignment                                              # (N,) bucket index of every file

``auto`` lists every (H, W) with both sides multiples of ``multiple`` (patch size x autoencoder
downsampling, so every bucket is a whole token grid), aspect ratio between 1:2 and 2:1, and area as close
to ``image_size``² as the multiple allows; an explicit list is ``"HxW,HxW,..."`` in pixels. Assignment reads
only image headers (and the EXIF rotation), so it is a pure function of the files.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ditlab.data.folder import ImageFolderDataset
from ditlab.data.transforms import to_mode, uint8_to_tensor
from ditlab.errors import ConfigError

MAX_RATIO = 2.0  # auto buckets: from 1:2 to 2:1
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def auto_buckets(image_size: int, multiple: int, max_ratio: float = MAX_RATIO) -> list[tuple[int, int]]:
    """Sizes (H, W), multiples of ``multiple``, of about ``image_size``² pixels and aspect in [1/max, max];
    the square (or nearest to it) first, then by aspect ratio W/H."""
    area = image_size * image_size
    sizes = set()
    for h in range(multiple, int(image_size * math.sqrt(max_ratio)) + multiple + 1, multiple):
        w = max(multiple, round(area / h / multiple) * multiple)
        if 1 / max_ratio <= w / h <= max_ratio:
            sizes.add((h, w))
    if not sizes:
        raise ConfigError(f"no bucket of about {image_size}x{image_size} pixels has sides that are multiples of "
                          f"{multiple}: raise --image_size")
    return _square_first(sorted(sizes, key=lambda s: s[1] / s[0]))


def _square_first(sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    square = min(range(len(sizes)), key=lambda i: (abs(math.log(sizes[i][1] / sizes[i][0])), i))
    return [sizes[square], *[s for i, s in enumerate(sizes) if i != square]]


def parse_buckets(spec: str, image_size: int, multiple: int) -> list[tuple[int, int]]:
    """The bucket list of ``--buckets`` (``auto`` or ``HxW,...``); a one-line ConfigError for bad syntax or a
    size that is not a multiple of ``multiple`` (patch size x autoencoder downsampling)."""
    spec = spec.strip()
    if spec == "auto":
        return auto_buckets(image_size, multiple)
    sizes = []
    for part in spec.split(","):
        try:
            h, w = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise ConfigError(f"bucket '{part.strip()}' is not HxW (e.g. --buckets 256x256,192x320): fix "
                              "--buckets") from None
        if h < 1 or w < 1:
            raise ConfigError(f"bucket {h}x{w} must have positive sides: fix --buckets")
        if h % multiple or w % multiple:
            raise ConfigError(f"bucket {h}x{w} is not divisible by {multiple} (patch size x autoencoder "
                              f"downsampling): use multiples of {multiple}, e.g. "
                              f"{_near(h, multiple)}x{_near(w, multiple)}")
        sizes.append((h, w))
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--buckets lists a size twice ({spec}): list each size once")
    return _square_first(sizes)


def _near(side: int, multiple: int) -> int:
    return max(multiple, round(side / multiple) * multiple)


def check_buckets(buckets: Sequence[tuple[int, int]], multiple: int) -> None:
    """A one-line ConfigError when a bucket is not a whole token grid (sides multiples of ``multiple``)."""
    for h, w in buckets:
        if h % multiple or w % multiple:
            raise ConfigError(f"bucket {h}x{w} is not divisible by {multiple} (patch size x autoencoder "
                              f"downsampling): use multiples of {multiple}")


def image_hw(path: str) -> tuple[int, int] | None:
    """(H, W) of an image as training sees it (after its EXIF rotation), from the header; None if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (w, h) if orientation in _ROTATED else (h, w)


def nearest_bucket(hw: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest (in log ratio) to the image's; ties: the first."""
    ratio = math.log(hw[1] / hw[0])
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][1] / buckets[i][0]) - ratio), i))


def crop_to(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Resize ``image`` to cover height x width (box halvings, then one bicubic step, as the ADM crop) and cut
    the centre: a uint8 array (height, width[, C])."""
    while image.size[0] >= 2 * width and image.size[1] >= 2 * height:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = max(width / image.size[0], height / image.size[1])
    size = (max(round(image.size[0] * scale), width), max(round(image.size[1] * scale), height))
    arr = np.asarray(image.resize(size, resample=Image.BICUBIC))
    top, left = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    return arr[top:top + height, left:left + width]


class BucketedImageFolder(ImageFolderDataset):
    """An image folder whose items are cropped to their aspect-ratio bucket (``assignment``), not a square.

    ``image_size`` stays the square side (what a square crop of this data would use, e.g. to train the
    autoencoder); ``buckets`` is the list of (H, W) sizes.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, buckets: Sequence[tuple[int, int]], *,
                 flip: bool = False, channels: int = 3):
        super().__init__(root, image_size, flip=flip, channels=channels)
        self.buckets = [tuple(int(v) for v in b) for b in buckets]
        sizes = [image_hw(f) for f in self.files]
        self.assignment = torch.tensor([nearest_bucket(s, self.buckets) if s else 0 for s in sizes], dtype=torch.long)

    def load(self, index: int) -> torch.Tensor:
        """Decode, convert and crop one file to its bucket -> float (C, H_b, W_b) in [-1, 1]."""
        height, width = self.buckets[int(self.assignment[index])]
        with Image.open(self.files[index]) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im = to_mode(im, self.channels)
        return uint8_to_tensor(crop_to(im, height, width))

    def counts(self) -> list[int]:
        """Images per bucket."""
        return torch.bincount(self.assignment, minlength=len(self.buckets)).tolist()


def bucketed_folder(spec: str, root: str | os.PathLike, image_size: int, multiple: int) -> BucketedImageFolder:
    """The bucketed dataset of ``--buckets spec`` over the image folder ``root`` (sides multiples of ``multiple``)."""
    return BucketedImageFolder(root, image_size, parse_buckets(spec, image_size, multiple))

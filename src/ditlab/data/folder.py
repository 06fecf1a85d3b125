"""User images from a folder: one subfolder per class, or a flat folder for unconditional training.

Files are decoded with Pillow inside ``__getitem__``, so DataLoader workers do the work in parallel.
A file that cannot be decoded (corrupt, truncated, not an image) never stops an epoch:
``__getitem__`` returns ``None`` for it and records it; :func:`collate_skip_bad` drops the ``None``
items and says how many it dropped; :meth:`ImageFolderDataset.bad_files` lists every file that
failed, across all worker processes, so the trainer can report them at the end of the run.
"""
from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Sequence
from multiprocessing.context import get_spawning_popen
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ditlab.data.transforms import center_crop_arr, to_mode, uint8_to_tensor
from ditlab.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: Path) -> list[str]:
    """All image files below ``folder`` (recursively), sorted; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
    return sorted(found)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images from ``root``; items are (image float (C, H, W) in [-1, 1], meta dict) or ``None``.

    With class subfolders, labels are the indices of the sorted subfolder names; a flat folder is
    unconditional (``num_classes == 0``, every label 0).
    """

    def __init__(self, root: str | os.PathLike, image_size: int, *, flip: bool = True, channels: int = 3):
        root = Path(root).expanduser()
        if not root.exists():
            raise DataError(f"data folder {root} does not exist: pass an existing image folder, 'mnist' or 'digits'")
        if not root.is_dir():
            raise DataError(
                f"{root} is not a folder: pass a folder of images (one subfolder per class), 'mnist' or 'digits'"
            )
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
        class_dirs = [e for e in entries if (root / e).is_dir() and _scan(root / e)]
        loose = [e for e in entries if (root / e).is_file() and _is_image(e)]
        if class_dirs and loose:
            raise DataError(
                f"{root} holds both class subfolders ({', '.join(class_dirs[:3])}...) and {len(loose)} loose images: "
                "move the loose images into a class subfolder, or use a flat folder for unconditional data"
            )
        files: list[str] = []
        labels: list[int] = []
        if class_dirs:
            for label, name in enumerate(class_dirs):
                paths = _scan(root / name)
                files.extend(paths)
                labels.extend([label] * len(paths))
            self.class_names = class_dirs
        else:
            files = _scan(root)
            labels = [0] * len(files)
            self.class_names = []
        if not files:
            raise DataError(
                f"no images found in {root}: add .png/.jpg files (one subfolder per class, or all in the folder itself)"
            )
        self.root = root
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.num_classes = len(self.class_names)
        self.image_size = int(image_size)
        self.channels = channels
        self.flip = flip
        self.name = root.name
        # One byte per file in shared memory, set to 1 by whichever worker process fails to decode
        # it: the main process sees every failure without any extra messages between processes.
        self._bad = multiprocessing.RawArray("b", len(files))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Decode, convert and centre-crop one file -> float (C, H, W) in [-1, 1], never flipped.

        Raises ``OSError``/``ValueError`` (or ``PIL.UnidentifiedImageError``) for a broken file.
        """
        with Image.open(self.files[index]) as im:
            im.load()  # decode now, inside the ``with``: truncated files fail here
            im = ImageOps.exif_transpose(im)  # phone photos store their rotation as a tag
            im = to_mode(im, self.channels)
        return uint8_to_tensor(center_crop_arr(im, self.image_size))

    def metas(self) -> list[dict]:
        """Every item's metadata (``{"label": class index}``, or ``{}`` for a flat folder), no decoding."""
        if not self.class_names:
            return [{} for _ in self.files]
        return [{"label": int(y)} for y in self.labels.tolist()]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | None:
        try:
            image = self.load(index)
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            if not self._bad[index]:
                self._bad[index] = 1
                warnings.warn(f"skipping unreadable image {self.files[index]}: {err}", stacklevel=2)
            return None
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)  # horizontal flip of (C, H, W)
        return image, ({"label": int(self.labels[index])} if self.class_names else {})

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # Worker processes started by spawn/forkserver receive the shared record itself; any other
        # pickling or deepcopy gets a private copy (shared ctypes refuse to be pickled otherwise).
        if get_spawning_popen() is None:
            state["_bad"] = bytes(self._bad)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["_bad"], bytes):
            flags = state["_bad"]
            state["_bad"] = multiprocessing.RawArray("b", len(flags))
            state["_bad"][:] = list(flags)
        self.__dict__.update(state)

    def bad_files(self) -> list[str]:
        """Every file that failed to decode so far (in any DataLoader worker), sorted."""
        return [f for f, bad in zip(self.files, self._bad, strict=True) if bad]

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, classes={self.num_classes}, "
            f"size={self.image_size}, channels={self.channels})"
        )


class Batch(tuple):
    """A collated batch that unpacks as ``images, metas = batch``.

    ``batch.kept`` lists the positions (within the requested batch) of the items that decoded, and
    ``batch.skipped`` counts the ones dropped as unreadable.
    """

    def __new__(cls, images: torch.Tensor, metas: list[dict], kept: Sequence[int] = (), skipped: int = 0) -> Batch:
        self = super().__new__(cls, (images, list(metas)))
        self.kept = list(kept)
        self.skipped = int(skipped)
        return self

    @property
    def images(self) -> torch.Tensor:
        return self[0]  # (N, C, H, W)

    @property
    def metas(self) -> list[dict]:
        return self[1]

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this; rebuilding a plain tuple would drop ``kept``/``skipped``.
        return Batch(self[0].pin_memory(), self[1], self.kept, self.skipped)

    def __reduce__(self):
        # Batches travel from DataLoader workers by pickle; keep ``kept`` and ``skipped`` on the way.
        return (Batch, (self[0], self[1], self.kept, self.skipped))

    def __repr__(self) -> str:
        return f"Batch(images={tuple(self[0].shape)}, kept={len(self.kept)}, skipped={self.skipped})"


def collate_skip_bad(items: Sequence[tuple[torch.Tensor, dict] | None]) -> Batch:
    """Stack the good items of a batch and drop the ``None`` ones (unreadable files).

    Returns ``Batch(images (n, C, H, W), metas)`` with ``n`` the number of good items, ``batch.kept``
    their positions in ``items`` and ``batch.skipped`` the number dropped. When every item failed,
    ``images`` is empty (shape (0,)) and the caller should skip the batch. The full list of failed
    files is ``dataset.bad_files()``.
    """
    kept = [i for i, it in enumerate(items) if it is not None]
    good = [items[i] for i in kept]
    images = torch.stack([g[0] for g in good]) if good else torch.empty(0)  # (n, C, H, W)
    return Batch(images, [dict(g[1]) for g in good], kept, len(items) - len(good))

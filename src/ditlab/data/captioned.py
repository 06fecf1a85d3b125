"""Captioned datasets: image folders with captions, and the built-in captioned MNIST.

Both carry ``captioned = True``; their items are ``(image, meta)`` with ``meta["caption"]`` the list of
the item's captions (one is drawn per use by the text condition), and ``metas()`` gives every item's
meta without decoding an image. ``ditlab.conditioning.condition_for_dataset`` picks a text condition
for them.

* :class:`CaptionedImageFolder`: an image folder whose captions come from ``metadata.jsonl`` files or
  ``NAME.txt`` sidecars (:mod:`ditlab.data.captions`); built by ``build_dataset`` for any folder that has
  either. Class subfolders keep their labels in the meta too (``--condition class`` still works).
* :class:`CaptionedMnist`: ``mnist-captions`` (all 60,000 training digits) and
  ``mnist-captions-holdout`` (without the 10 held-out (digit, thickness, slant) combinations: the text
  demo's training set); metas ``{"label", "thickness", "slant", "caption": [4 captions]}`` with the
  measured levels (:mod:`ditlab.data.mnist_captions`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ditlab.data.builtin import BuiltinDataset
from ditlab.data.captions import METADATA_NAME, CaptionReport, _sidecar, read_captions
from ditlab.data.folder import ImageFolderDataset, _scan
from ditlab.errors import DataError

CAPTIONED_BUILTINS = {
    "mnist-captions": "MNIST with 4 captions per digit naming its digit, thickness and slant (60,000 train)",
    "mnist-captions-holdout": "mnist-captions without the 10 held-out (digit, thickness, slant) combinations",
}
CAPTIONS_PER_DIGIT = 4


def has_captions(root: str | os.PathLike) -> bool:
    """Whether an image folder holds captions: a ``metadata.jsonl`` anywhere, or a ``NAME.txt`` beside an image."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return False
    for _, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if METADATA_NAME in filenames:
            return True
    return any(_sidecar(f).is_file() for f in _scan(root))


class CaptionedImageFolder(ImageFolderDataset):
    """An :class:`ImageFolderDataset` whose items carry ``{"caption": [...]}`` (plus ``label`` with class folders).

    ``caption_report`` (:class:`ditlab.data.captions.CaptionReport`) counts images without a caption
    (they train with the empty caption) and metadata entries naming absent images (skipped).
    """

    captioned = True

    def __init__(self, root: str | os.PathLike, image_size: int, *, flip: bool = True, channels: int = 3):
        super().__init__(root, image_size, flip=flip, channels=channels)
        captions, self.caption_report = read_captions(self.root, self.files)
        self.captions = [captions[f] for f in self.files]
        firsts = [c[0] for c in self.captions if c and c[0]]
        self.example_prompts = list(dict.fromkeys(firsts))[:4]

    def _meta(self, index: int) -> dict:
        meta = {"caption": list(self.captions[index])}
        if self.class_names:
            meta["label"] = int(self.labels[index])
        return meta

    def metas(self) -> list[dict]:
        """Every item's meta (captions, and labels with class folders), without decoding images."""
        return [self._meta(i) for i in range(len(self.files))]

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        return None if item is None else (item[0], self._meta(index))

    def report(self) -> str:
        """One line about the captions (printed when training starts and ends)."""
        return self.caption_report.summary()


class CaptionedMnist(BuiltinDataset):
    """MNIST digits with their measured thickness/slant levels and 4 template captions each.

    Items: ``(image, {"label", "thickness", "slant", "caption": [...]})``; ``tensors()`` gives the
    uint8 images and labels, like the ``mnist`` built-in, so latents are encoded once in memory.
    """

    captioned = True

    def __init__(self, name: str, images: torch.Tensor, data: dict, flip: bool):
        super().__init__(name, images, torch.from_numpy(data["labels"]), flip)
        self.thickness_levels = torch.from_numpy(data["thickness_level"])  # (N,) 0/1/2
        self.slant_levels = torch.from_numpy(data["slant_level"])  # (N,) 0/1/2
        self.index = torch.from_numpy(data["index"])  # (N,) MNIST index of each digit
        self.captions: list[list[str]] = data["captions"]
        from ditlab.data.mnist_captions import HELD_OUT, eval_prompts

        # in-training grids: two held-out combinations and two seen ones, in evaluation phrasings
        picks = [HELD_OUT[3], HELD_OUT[7], (3, 0, 1), (7, 1, 1)]
        self.example_prompts = [eval_prompts(d, t, s, 1)[0] for d, t, s in picks]

    def _meta(self, i: int) -> dict:
        return {"label": int(self._labels[i]), "thickness": int(self.thickness_levels[i]),
                "slant": int(self.slant_levels[i]), "caption": list(self.captions[i])}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, _ = super().__getitem__(index)
        return image, self._meta(index)

    def metas(self) -> list[dict]:
        """Every digit's label, levels and captions, without touching the images."""
        return [self._meta(i) for i in range(len(self))]

    def __repr__(self) -> str:
        return f"CaptionedMnist({self.name!r}, n={len(self)}, size={self.image_size})"


def build_captioned_mnist(name: str, image_size: int, *, split: str = "train", flip: bool | None = None,
                          channels: int | None = None, seed: int = 0) -> CaptionedMnist:
    """``mnist-captions`` / ``mnist-captions-holdout`` at ``image_size`` (32: MNIST padded by 2 pixels).

    The held-out combinations are dropped from the training split of ``mnist-captions-holdout`` only;
    its test split is the whole MNIST test set (evaluation prompts every combination).
    """
    from ditlab.data.builtin import build_builtin
    from ditlab.data.mnist_captions import captioned_mnist

    if name not in CAPTIONED_BUILTINS:
        raise DataError(f"unknown captioned dataset {name!r}: use one of {', '.join(CAPTIONED_BUILTINS)}")
    drop = name == "mnist-captions-holdout" and split == "train"
    data = captioned_mnist(split, k=CAPTIONS_PER_DIGIT, seed=seed, drop_held_out=drop)
    base = build_builtin("mnist", image_size, split=split, flip=flip, channels=channels)
    images, _ = base.tensors()  # (60000 | 10000, C, H, W) uint8, resized as the mnist built-in
    images = images[torch.from_numpy(data["index"])].contiguous()
    return CaptionedMnist(name, images, data, flip=bool(flip))


__all__ = ["CAPTIONED_BUILTINS", "CaptionReport", "CaptionedImageFolder", "CaptionedMnist", "build_captioned_mnist",
           "has_captions"]

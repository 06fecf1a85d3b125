"""Captioned datasets through build_dataset: folders with captions, and the built-in captioned MNIST."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from ditlab.data import CaptionedImageFolder, ImageFolderDataset, build_dataset
from ditlab.data.captioned import CaptionedMnist, has_captions
from ditlab.data.mnist_captions import HELD_OUT, attribute_levels, is_held_out


def _folder(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(root / n)
    return root


def test_captioned_folder_items_and_metas(tmp_path):
    root = _folder(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": ["a red square", "a square"]}) + "\n"
        + json.dumps({"file_name": "missing.png", "text": "gone"}) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("a dark square\n", encoding="utf-8")
    assert has_captions(root)
    ds = build_dataset(root, 8)
    assert isinstance(ds, CaptionedImageFolder) and ds.captioned and ds.num_classes == 0
    assert ds.metas() == [{"caption": ["a red square", "a square"]}, {"caption": ["a dark square"]}, {"caption": [""]}]
    image, meta = ds[1]
    assert image.shape == (3, 8, 8) and meta == {"caption": ["a dark square"]}
    report = ds.report()
    assert "2 of 3 images" in report and "1 without a caption" in report and "missing.png" in report
    assert ds.example_prompts == ["a red square", "a dark square"]


def test_captioned_class_folders_keep_labels_and_plain_folders_stay_plain(tmp_path):
    root = _folder(tmp_path / "cls", ["cats/x.png", "dogs/y.png"])
    (root / "dogs" / "y.txt").write_text("a dog\n", encoding="utf-8")
    ds = build_dataset(root, 8)
    assert isinstance(ds, CaptionedImageFolder)
    assert ds.metas() == [{"caption": [""], "label": 0}, {"caption": ["a dog"], "label": 1}]
    plain = _folder(tmp_path / "plain", ["p.png"])
    (plain / "notes.txt").write_text("not a sidecar of any image", encoding="utf-8")
    assert not has_captions(plain) and type(build_dataset(plain, 8)) is ImageFolderDataset


def test_builtin_mnist_captions_with_and_without_the_held_out_combinations():
    full = build_dataset("mnist-captions", 32)
    held = build_dataset("mnist-captions-holdout", 32)
    assert isinstance(held, CaptionedMnist) and held.captioned and len(full) == 60_000
    images, labels = held.tensors()
    assert images.shape == (len(held), 1, 32, 32) and images.dtype == torch.uint8
    metas = held.metas()
    t = np.array([m["thickness"] for m in metas])
    s = np.array([m["slant"] for m in metas])
    assert not is_held_out(labels.numpy(), t, s).any()
    assert 6_000 < len(full) - len(held) < 7_000  # about 1/9 of the digits of each of the 10 combinations
    # the levels in the metas are the ones measured on the images, and every item has 4 captions
    pick = np.arange(0, len(held), 997)
    lt, ls = attribute_levels(images[pick].numpy())
    assert (lt == t[pick]).all() and (ls == s[pick]).all()
    assert all(len(m["caption"]) == 4 for m in metas[:100])
    image, meta = held[5]
    assert image.shape == (1, 32, 32) and meta == metas[5]
    # a kept digit has the same captions in both sets (captions are keyed by the MNIST index)
    i = int(held.index[10])
    assert full.metas()[i]["caption"] == metas[10]["caption"]
    test = build_dataset("mnist-captions-holdout", 32, split="test")
    assert len(test) == 10_000  # evaluation sees every combination
    d, tl, sl = HELD_OUT[0]
    tm = test.metas()
    assert any(m["label"] == d and m["thickness"] == tl and m["slant"] == sl for m in tm)

"""Latent caches written by earlier versions (format 1: ``labels.npy``, no condition records) still load."""
from __future__ import annotations

import json

import numpy as np
import torch
from latent_fakes import FakeAutoencoder

from ditlab.conditioning import ClassCondition
from ditlab.data import build_dataset
from ditlab.data.extract import extract_latents
from ditlab.data.latent_cache import INDEX, LABELS, RECORDS, LatentCache


def _as_version_1(root) -> None:
    """Rewrite a current cache the way format 1 stored it: labels.npy, no records, no condition."""
    cache = LatentCache.open(root)
    np.save(root / LABELS, cache.records["y"].numpy())
    (root / RECORDS).unlink()
    index = json.loads((root / INDEX).read_text())
    index["version"] = 1
    index.pop("condition")
    (root / INDEX).write_text(json.dumps(index))


def test_version_1_cache_loads_with_class_records(tmp_path, image_folder):
    dataset = build_dataset(image_folder, 32, flip=False)
    extract_latents(dataset, FakeAutoencoder(), tmp_path / "c", image_size=32, shard_size=4, progress=False)
    current = LatentCache.open(tmp_path / "c")
    latents = [current.get(i) for i in range(len(current))]
    _as_version_1(tmp_path / "c")
    old = LatentCache.open(tmp_path / "c")
    assert old.index.version == 1 and torch.equal(old.records["y"], current.records["y"])
    condition = old.condition()
    assert isinstance(condition, ClassCondition) and condition.class_names == ["a", "b"]
    assert all(torch.equal(old.get(i), latents[i]) for i in range(len(old)))

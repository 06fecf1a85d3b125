"""Built-in MNIST and digits: shapes, value ranges, padding/resizing, the CSV cache, bad specs."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ditlab.data import BUILTIN_DATASETS, build_dataset
from ditlab.data import builtin as builtin_mod
from ditlab.errors import DataError


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    # One private cache for the module: MNIST is converted once here, never in the user's cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DITLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_digits_native_shapes_and_values():
    from sklearn.datasets import load_digits

    ds = build_dataset("digits", 8)
    test = build_dataset("digits", 8, split="test")
    assert (len(ds), len(test)) == (1497, 300)
    assert ds.num_classes == 10 and ds.channels == 1 and ds.image_size == 8 and ds.name == "digits"
    assert ds.class_names == [str(i) for i in range(10)] and not ds.flip
    images, labels = ds.tensors()
    assert images.dtype == torch.uint8 and images.shape == (1497, 1, 8, 8)
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    # Train and test are disjoint and together are sklearn's 1,797 digits, rescaled 0..16 -> 0..255.
    both = torch.cat([images, test.tensors()[0]]).flatten(1).numpy().astype(np.int64)
    ref = np.rint(load_digits().images.reshape(-1, 64) * 255 / 16).astype(np.int64)
    assert sorted(map(tuple, both)) == sorted(map(tuple, ref))
    x, meta = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and meta == {"label": int(labels[0])}
    assert ds.metas()[:3] == [{"label": int(v)} for v in labels[:3]]
    assert torch.equal(x, images[0].float() / 127.5 - 1)
    assert x.min() == -1.0 and x.max() <= 1.0


def test_digits_resized_and_three_channels():
    ds = build_dataset("digits", 16, channels=3)
    images, _ = ds.tensors()
    assert images.shape == (1497, 3, 16, 16) and ds.channels == 3
    assert torch.equal(images[:, 0], images[:, 2])
    # Upsampling keeps the mean brightness (within rounding and bicubic overshoot clipping).
    native = build_dataset("digits", 8).tensors()[0].float().mean()
    assert abs(images.float().mean() - native) < 3.0


def test_mnist_cache_shapes_padding_and_speed():
    first = time.time()
    ds = build_dataset("mnist", 32)
    assert len(ds) == 60000 and ds.num_classes == 10 and ds.channels == 1
    images, labels = ds.tensors()
    assert images.shape == (60000, 1, 32, 32) and images.dtype == torch.uint8
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first training digits
    # 32 px = 28 px padded by 2 black pixels on each side, no resampling.
    native = build_dataset("mnist", 28).tensors()[0]
    assert torch.equal(images[:, :, 2:30, 2:30], native)
    assert images[:, :, :2].max() == 0 and images[:, :, :, 30:].max() == 0
    assert native.max() == 255 and native.min() == 0
    # Second load reads the cache.
    assert (builtin_mod.cache_dir() / "mnist_v1.npz").exists()
    start = time.process_time()
    test = build_dataset("mnist", 28, split="test")
    assert time.process_time() - start < 1.0
    assert len(test) == 10000 and torch.bincount(test.tensors()[1]).min() > 800
    x, meta = test[0]
    assert x.shape == (1, 28, 28) and x.min() == -1.0 and x.max() == 1.0 and meta == {"label": 7}
    assert time.time() - first < 120


def test_mnist_other_size_resizes():
    ds = build_dataset("mnist", 16, split="test")
    images = ds.tensors()[0]
    assert images.shape == (10000, 1, 16, 16)
    # Area-preserving downsampling keeps the average ink within a few grey levels.
    native = build_dataset("mnist", 28, split="test").tensors()[0].float().mean()
    assert abs(images.float().mean() - native) < 3.0


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
    cache = builtin_mod.cache_dir()
    cache.mkdir(parents=True)
    (cache / "mnist_v1.npz").write_bytes(b"garbage")
    ds = build_dataset("mnist", 28, split="test")
    assert len(ds) == 10000
    with np.load(cache / "mnist_v1.npz") as z:
        assert z["train_images"].shape == (60000, 28, 28)


def test_builtin_registry_and_bad_specs():
    assert set(BUILTIN_DATASETS) == {"mnist", "digits"}
    with pytest.raises(DataError, match="unknown split"):
        build_dataset("digits", 8, split="val")
    with pytest.raises(DataError, match="channels"):
        build_dataset("digits", 8, channels=2)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("mnistt", 8)  # a typo is read as a folder path that does not exist
    with pytest.raises(DataError):
        build_dataset("", 8)

"""Aspect-ratio buckets: the size list, assignment by aspect ratio (EXIF rotation too), crops, and the data
order (one bucket per global batch, a pure function of (seed, batch number))."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data.buckets import (
    BucketedImageFolder,
    auto_buckets,
    crop_to,
    image_hw,
    nearest_bucket,
    parse_buckets,
)
from ditlab.errors import ConfigError, DataError
from ditlab.training.buckets import BucketBatchOrder


def test_auto_buckets_are_whole_grids_of_about_the_target_area():
    sizes = auto_buckets(256, 16)
    assert sizes[0] == (256, 256)  # the square first: the run's default size
    for h, w in sizes:
        assert h % 16 == 0 and w % 16 == 0
        assert 0.5 <= w / h <= 2.0
        assert abs(h * w - 256 * 256) <= 16 * max(h, w) / 2  # w is the multiple nearest area / h
    ratios = [w / h for h, w in sizes[1:]]
    assert ratios == sorted(ratios) and len(set(sizes)) == len(sizes) and len(sizes) >= 9
    assert (192, 336) in sizes and (336, 192) in sizes


def test_explicit_buckets_and_their_errors():
    assert parse_buckets("24x40, 32x32,40x24", 32, 8) == [(32, 32), (24, 40), (40, 24)]
    for spec, message in [("32x30", "not divisible by 8 .* e.g. 32x32"), ("32by32", "is not HxW"),
                          ("32x32,32x32", "twice"), ("0x32", "positive")]:
        with pytest.raises(ConfigError, match=message) as err:
            parse_buckets(spec, 32, 8)
        assert "\n" not in str(err.value)


def test_nearest_bucket_by_log_aspect_ratio():
    buckets = [(32, 32), (24, 40), (40, 24)]
    assert nearest_bucket((100, 100), buckets) == 0
    assert nearest_bucket((100, 180), buckets) == 1 and nearest_bucket((300, 100), buckets) == 2
    # ties go to the first listed: sqrt(1 * 5/3) is halfway in log ratio between 1 and 5/3
    assert nearest_bucket((1000, round(1000 * math.sqrt(5 / 3))), buckets) in (0, 1)


def test_image_size_follows_exif_rotation(tmp_path):
    Image.new("RGB", (60, 20)).save(tmp_path / "wide.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a phone photo stored landscape, shown portrait
    Image.new("RGB", (60, 20)).save(tmp_path / "rotated.jpg", exif=exif)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert image_hw(str(tmp_path / "wide.jpg")) == (20, 60)
    assert image_hw(str(tmp_path / "rotated.jpg")) == (60, 20)
    assert image_hw(str(tmp_path / "bad.png")) is None


def test_crop_covers_then_cuts_the_centre():
    arr = np.zeros((40, 100, 3), np.uint8)
    arr[:, 45:55] = 255  # a bright vertical bar in the middle
    out = crop_to(Image.fromarray(arr), 16, 32)
    assert out.shape == (16, 32, 3)
    assert out[:, 14:18].mean() > 200 and out[:, :8].mean() < 10


def _mixed_folder(root, n_wide=6, n_tall=5, n_square=3):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w), n in (("wide", (20, 44), n_wide), ("tall", (50, 22), n_tall), ("sq", (30, 30), n_square)):
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{name}{i}.png")
    return root


def test_bucketed_folder_crops_each_image_to_its_bucket(tmp_path):
    ds = BucketedImageFolder(_mixed_folder(tmp_path / "d"), 16, [(16, 16), (8, 24), (24, 8)])
    assert ds.counts() == [3, 6, 5]  # 3 square, 6 wide (H < W: 8x24), 5 tall (24x8)
    shapes = {tuple(ds[i][0].shape) for i in range(len(ds))}
    assert shapes == {(3, 16, 16), (3, 8, 24), (3, 24, 8)}
    wide = ds.files.index(str(tmp_path / "d" / "wide0.png"))
    assert ds[wide][0].shape == (3, 8, 24) and ds[wide][1] == {}


def test_bucket_order_is_a_pure_function_of_seed_and_batch():
    assignment = torch.tensor([0] * 10 + [1] * 7 + [2] * 2)
    buckets = [(16, 16), (8, 24), (24, 8)]
    a = BucketBatchOrder(assignment, buckets, global_batch=3, seed=5)
    assert a.batches_per_epoch == 3 + 2 and a.unused == [(24, 8)]
    seen = []
    for k in range(a.batches_per_epoch):
        idx = a.indices(k)
        assert len(idx) == 3 and len(set(assignment[idx].tolist())) == 1  # one bucket per batch
        assert assignment[idx[0]].item() == a.bucket(k)
        seen += idx.tolist()
    assert len(seen) == len(set(seen))  # no item twice in an epoch
    b = BucketBatchOrder(assignment, buckets, global_batch=3, seed=5)  # a resumed run: starts anywhere
    for k in (11, 3, 7, 0, 12):
        assert torch.equal(a.indices(k), b.indices(k)) and a.bucket(k) == b.bucket(k)
        assert torch.equal(a.flips(k), b.flips(k))
    c = BucketBatchOrder(assignment, buckets, global_batch=3, seed=6)
    assert any(not torch.equal(a.indices(k), c.indices(k)) for k in range(5))
    epochs = {tuple(a.indices(k).tolist()) for k in range(5)} != {tuple(a.indices(k).tolist()) for k in range(5, 10)}
    assert epochs  # each epoch draws its own permutations


def test_no_full_bucket_is_a_one_line_error():
    with pytest.raises(DataError, match="no aspect-ratio bucket holds a full global batch of 8") as err:
        BucketBatchOrder(torch.tensor([0, 0, 1, 1, 1]), [(8, 8), (8, 16)], global_batch=8, seed=0)
    assert "\n" not in str(err.value)

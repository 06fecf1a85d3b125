"""Image folders: classes, flat folders, bad files, odd image modes, and the loader contract."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main as cli_main  # noqa: F401  (importable alongside the data package)
from ditlab.data import Batch, build_dataset, collate_skip_bad
from ditlab.errors import DataError, UserError


def _png(path, color, size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "pets"
    _png(root / "dog" / "a.png", (255, 0, 0))
    _png(root / "dog" / "b.jpg", (255, 0, 0))
    _png(root / "cat" / "nested" / "c.png", (0, 0, 255))
    _png(root / "cat" / "d.PNG", (0, 0, 255))
    _png(root / "cat" / "e.png", (0, 0, 255))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "x.png", (0, 255, 0))
    (root / "empty_class").mkdir()  # no images: not a class
    return root


def test_class_folder_labels_by_sorted_name(class_folder):
    ds = build_dataset(class_folder, 8)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds) == 5 and ds.channels == 3 and ds.image_size == 8 and ds.name == "pets"
    labels = [ds[i][1]["label"] for i in range(len(ds))]
    assert sorted(labels) == [0, 0, 0, 1, 1] and [m["label"] for m in ds.metas()] == labels
    for i in range(len(ds)):
        image, meta = ds[i]
        label = meta["label"]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        # cat = blue, dog = red, exactly (+1 / -1 after scaling; JPEG may be off by a little)
        want = torch.tensor([-1.0, -1.0, 1.0]) if label == 0 else torch.tensor([1.0, -1.0, -1.0])
        assert (image.mean(dim=(1, 2)) - want).abs().max() < 0.05


def test_flat_folder_is_unconditional(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (i * 100, 0, 0))
    ds = build_dataset(tmp_path, 4, channels=1)
    assert ds.num_classes == 0 and ds.class_names == []
    image, meta = ds[2]
    assert image.shape == (1, 4, 4) and meta == {} and ds.metas() == [{}, {}, {}]
    # (200, 0, 0) -> L = 0.299 * 200 = 59.8 -> 60 -> 60 / 127.5 - 1
    assert torch.allclose(image, torch.full((1, 4, 4), 60 / 127.5 - 1))


def test_flip_default_on_for_folders_and_flips_horizontally(tmp_path):
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[:, :2] = 255  # left half white
    Image.fromarray(arr).save(tmp_path / "half.png")
    ds = build_dataset(tmp_path, 4)
    assert ds.flip
    torch.manual_seed(0)
    seen = {tuple(ds[0][0][0, 0].tolist()) for _ in range(20)}
    assert seen == {(1.0, 1.0, -1.0, -1.0), (-1.0, -1.0, 1.0, 1.0)}
    ds = build_dataset(tmp_path, 4, flip=False)
    assert all(ds[0][0][0, 0].tolist() == [1.0, 1.0, -1.0, -1.0] for _ in range(10))


def test_odd_modes_and_small_images_convert(tmp_path):
    Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16)).save(tmp_path / "16bit.png")
    Image.new("L", (6, 6), 0).save(tmp_path / "gray.png")
    Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(tmp_path / "rgba.png")  # transparent -> white
    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "palette.gif")
    Image.new("CMYK", (3, 3), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    ds = build_dataset(tmp_path, 12, flip=False)
    assert len(ds) == 5
    got = {ds.files[i].rsplit("/", 1)[1]: ds[i][0] for i in range(len(ds))}
    for name, image in got.items():
        assert image.shape == (3, 12, 12), name
        assert image.min() >= -1 and image.max() <= 1
    assert torch.allclose(got["16bit.png"], torch.ones(3, 12, 12))
    assert torch.allclose(got["gray.png"], -torch.ones(3, 12, 12))
    assert torch.allclose(got["rgba.png"], torch.ones(3, 12, 12))
    assert got["palette.gif"].mean(dim=(1, 2)).tolist() == [-1.0, 1.0, -1.0]
    assert (got["cmyk.jpg"] > 0.95).all()  # CMYK (0,0,0,0) is white


def _bad_folder(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        _png(root / "a" / f"good{i}.png", (0, 255, 0))
    (root / "a" / "garbage.png").write_bytes(b"this is not a png at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "a" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "a" / "empty.png").write_bytes(b"")
    return root


def test_corrupt_and_truncated_files_are_skipped_and_counted(tmp_path):
    ds = build_dataset(_bad_folder(tmp_path), 8)
    assert len(ds) == 7
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert sum(it is None for it in items) == 3
    assert len(caught) == 3  # one warning per bad file, naming it
    assert {p.rsplit("/", 1)[1] for p in ds.bad_files()} == {"garbage.png", "truncated.jpg", "empty.png"}
    batch = collate_skip_bad(items)
    images, metas = batch  # unpacks as a pair
    assert images.shape == (4, 3, 8, 8) and metas == [{"label": 0}] * 4 and batch.skipped == 3
    assert batch.kept == [i for i, it in enumerate(items) if it is not None]
    empty = collate_skip_bad([None, None])
    assert len(empty.metas) == 0 and empty.kept == [] and empty.skipped == 2


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_bad_files_seen_across_dataloader_workers(tmp_path):
    ds = build_dataset(_bad_folder(tmp_path), 8)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skip_bad)
    total, skipped = 0, 0
    for batch in loader:  # a whole epoch completes despite the bad files
        assert isinstance(batch, Batch)
        total += len(batch.metas)
        skipped += batch.skipped
    assert (total, skipped) == (4, 3)
    assert len(ds.bad_files()) == 3  # recorded by the worker processes, visible here


def test_missing_and_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(tmp_path / "nope", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_dataset(tmp_path / "empty", 8)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        build_dataset(tmp_path / "file.png", 8)
    mixed = tmp_path / "mixed"
    _png(mixed / "cls" / "a.png", (0, 0, 0))
    _png(mixed / "loose.png", (0, 0, 0))
    with pytest.raises(DataError, match="loose images"):
        build_dataset(mixed, 8)
    with pytest.raises(UserError, match="positive integer"):
        build_dataset(mixed / "cls", 0)
    err = pytest.raises(DataError, build_dataset, tmp_path / "nope", 8).value
    assert "\n" not in str(err)


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_dataset_copies_and_pickles_with_its_own_record(tmp_path):
    import copy
    import pickle

    ds = build_dataset(_bad_folder(tmp_path), 8)
    assert ds[0] is None  # empty.png sorts first: recorded as bad before copying
    before = ds.bad_files()
    clone = pickle.loads(pickle.dumps(ds))
    twin = copy.deepcopy(ds)
    assert clone.bad_files() == before == twin.bad_files()
    for i in range(len(ds)):
        twin[i]
    assert len(before) == 1 and len(twin.bad_files()) == 3 and ds.bad_files() == before  # no write-back


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255  # wide image, left half white
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = build_dataset(tmp_path, 4, flip=False)[0][0]  # displayed upright: tall, white on top
    assert out[0, 0].mean() > 0.8 and out[0, -1].mean() < -0.8

"""Evaluation inputs: folders, ADM .npz, statistics files, and the bad-input messages."""
from __future__ import annotations

import numpy as np
import pytest
from eval_data import mnist_digits, write_folder
from PIL import Image

from ditlab.errors import DataError
from ditlab.evaluation.metrics import FeatureStats
from ditlab.evaluation.sources import load_image_source, save_stats


def _collect(source, batch_size):
    batches = list(source.batches(batch_size))
    assert all(b.dtype == np.uint8 and b.ndim == 4 and b.shape[-1] == 3 for b in batches)
    return batches


def test_folder_source_reads_every_image(tmp_path):
    images, _ = mnist_digits(5)
    src = load_image_source(write_folder(tmp_path / "imgs", images))
    assert src.kind == "folder" and src.num_images == 5 and not src.notes
    batches = _collect(src, 2)
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)  # sorted by name


def test_folder_with_mixed_sizes_is_kept_and_noted(tmp_path):
    folder = tmp_path / "mixed"
    write_folder(folder, mnist_digits(3)[0])
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(folder / "big.png")
    (folder / "sub").mkdir()  # folders are searched recursively
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(folder / "sub" / "g.png")  # grayscale
    src = load_image_source(folder)
    assert src.num_images == 5
    assert len(src.notes) == 1 and "mixes image sizes" in src.notes[0] and "3x 28x28" in src.notes[0]
    batches = _collect(src, 64)
    assert sorted(b.shape[1:3] for b in batches) == [(8, 8), (28, 28), (40, 30)]
    gray = next(b for b in batches if b.shape[1] == 8)
    assert np.all(gray == 200)  # grayscale replicated to RGB


def test_too_few_images_and_missing_paths(tmp_path):
    one = write_folder(tmp_path / "one", mnist_digits(1)[0])
    (one / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds 1 image"):
        load_image_source(one)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds 0 image"):
        load_image_source(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_image_source(tmp_path / "nowhere")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match="not a folder or an .npz"):
        load_image_source(tmp_path / "x.txt")
    bad = tmp_path / "bad"
    write_folder(bad, mnist_digits(2)[0])
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_image_source(bad)


@pytest.mark.parametrize("compressed", [False, True])
def test_adm_npz_streams_arr_0(tmp_path, compressed):
    images, labels = mnist_digits(7)
    path = tmp_path / "samples.npz"
    (np.savez_compressed if compressed else np.savez)(path, images, labels)  # arr_0, arr_1 as ADM
    src = load_image_source(path)
    assert src.kind == "npz" and src.num_images == 7
    batches = _collect(src, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    gray = tmp_path / "gray.npz"
    np.savez(gray, arr_0=images[..., 0])  # N x H x W is accepted and replicated
    np.testing.assert_array_equal(np.concatenate(list(load_image_source(gray).batches(4))), images)


def test_bad_npz_files(tmp_path):
    np.savez(tmp_path / "other.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="neither 'arr_0'.*nor 'mu'/'sigma'"):
        load_image_source(tmp_path / "other.npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_image_source(tmp_path / "float.npz")
    np.savez(tmp_path / "one.npz", arr_0=np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="at least 2"):
        load_image_source(tmp_path / "one.npz")
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(4))
    with pytest.raises(DataError, match="no 'sigma'"):
        load_image_source(tmp_path / "mu_only.npz")
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(DataError, match="do not fit"):
        load_image_source(tmp_path / "shapes.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        load_image_source(tmp_path / "junk.npz")


def test_stats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    stats = FeatureStats.from_features(rng.normal(size=(20, 5)))
    out = save_stats(tmp_path / "ref_stats", stats)
    assert out.name == "ref_stats.npz"
    src = load_image_source(out)
    assert src.kind == "stats" and src.num_images == 20
    np.testing.assert_array_equal(src.stats.mu, stats.mu)
    np.testing.assert_array_equal(src.stats.sigma, stats.sigma)
    with pytest.raises(ValueError):
        next(src.batches())
    # pytorch-fid's own stats files carry just mu and sigma.
    np.savez(tmp_path / "ptfid.npz", mu=stats.mu, sigma=stats.sigma)
    assert load_image_source(tmp_path / "ptfid.npz").stats.num == 0


def test_content_hash_follows_the_bytes(tmp_path):
    folder = write_folder(tmp_path / "a", mnist_digits(3)[0])
    h1 = load_image_source(folder).content_hash()
    assert load_image_source(folder).content_hash() == h1
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "0001.png")
    assert load_image_source(folder).content_hash() != h1

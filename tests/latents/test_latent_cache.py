"""The latent cache: round trip, random flips, refusals, interruption and resume, bad images."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from latent_fakes import FailingDataset, FakeAutoencoder, cache_arrays, make_image_folder

from ditlab.data import build_dataset
from ditlab.data.extract import extract_latents
from ditlab.data.latent_cache import LatentCache
from ditlab.errors import DataError

SMALL = dict(image_size=32, batch_size=3, shard_size=4, progress=False)  # 10 images -> shards 4, 4, 2


def _extract(folder, out, ae=None, dataset=None, **kw):
    ae = ae or FakeAutoencoder()
    dataset = dataset or build_dataset(folder, 32, flip=False)
    return extract_latents(dataset, ae, out, **{**SMALL, **kw}), ae


def _direct(ae, folder):
    """Direct encoding of every image and of its mirror image: (N, c, h, w) twice."""
    ds = build_dataset(folder, 32, flip=False)
    images = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, 3, 32, 32)
    return ae.encode(images), ae.encode(images.flip(-1)), ds


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_equals_direct_encoding(tmp_path, image_folder, tiny_vae_dir, dtype):
    """The real AutoencoderKL in float32 storage; the cheap fake one for float16 storage."""
    from ditlab.autoencoders.diffusers_vae import load_diffusers_vae

    ae = load_diffusers_vae(tiny_vae_dir) if dtype == "float32" else FakeAutoencoder()
    _extract(image_folder, tmp_path / "c", ae=ae, dtype=dtype)
    cache = LatentCache.open(tmp_path / "c", verify=True)
    plain, flipped, ds = _direct(ae, image_folder)
    assert len(cache) == len(ds) == 10
    # float32 storage is exact up to batch-composition rounding; float16 adds its own 2^-11 rounding.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=2**-10, atol=1e-6)
    for i in range(len(ds)):
        torch.testing.assert_close(cache.get(i, flip=False), plain[i], **tol)
        torch.testing.assert_close(cache.get(i, flip=True), flipped[i], **tol)
    assert (plain - flipped).abs().max() > 1e-2  # the flip is really another latent
    ix = cache.index
    side = 32 // ae.downsample
    assert ix.latent_shape == (4, side, side) and ix.image_size == 32 and ix.dtype == dtype
    assert ix.autoencoder_identity == ae.identity() and ix.scaling_factor == ae.scaling_factor
    assert ix.num_classes == 2 and ix.class_names == ["a", "b"]
    np.testing.assert_array_equal(cache.records["y"].numpy(), ds.labels.numpy())
    assert cache.records["y"].tolist() == [0] * 5 + [1] * 5 and ix.shard_rows == (4, 4, 2)
    assert ix.condition == {"kind": "class", "num_classes": 2, "class_names": ["a", "b"]} and ix.version == 2
    cache.check_compatible(ae.identity(), 32, (4, side, side))  # the matching run is accepted


def test_cache_pickles_without_its_memory_maps(tmp_path, image_folder):
    _extract(image_folder, tmp_path / "c")
    cache = LatentCache.open(tmp_path / "c")
    cache.get(9, True)  # maps a shard
    # Pickles without its memory maps (DataLoader workers) and reads the same numbers after.
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._maps == {} and torch.equal(clone.get(9, True), cache.get(9, True))


def test_check_compatible_refuses_other_autoencoder_size_or_shape(tmp_path, image_folder):
    _extract(image_folder, tmp_path / "c")
    cache = LatentCache.open(tmp_path / "c")
    ident = FakeAutoencoder().identity()
    cache.check_compatible(ident, 32, [4, 16, 16])
    for args, what in [
        ((FakeAutoencoder(seed=1).identity(), 32, (4, 16, 16)), "encoded by autoencoder"),
        ((ident, 64, (4, 16, 16)), "holds 32px images but this run trains at 64px"),
        ((ident, 32, (4, 32, 32)), r"latents of shape \[4, 16, 16\] but this run expects \[4, 32, 32\]"),
    ]:
        with pytest.raises(DataError, match=what) as err:
            cache.check_compatible(*args)
        assert "\n" not in str(err.value)


def test_interrupted_extraction_resumes_with_only_missing_shards(tmp_path, image_folder):
    _extract(image_folder, tmp_path / "ref", sample=True, seed=5)
    ds = build_dataset(image_folder, 32, flip=False)
    with pytest.raises(KeyboardInterrupt):  # killed while reading item 9 (third shard)
        _extract(image_folder, tmp_path / "c", dataset=FailingDataset(ds, fail_at=9), sample=True, seed=5)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["plan.json"] + [f"shard-0000{k}.{e}" for k in (0, 1) for e in ("json", "npy")]
    with pytest.raises(DataError, match="incomplete"):
        LatentCache.open(tmp_path / "c")
    # What a crash in the middle of writing shard 2 leaves: a temporary file, or a .npy whose
    # receipt never got written. Neither may count as done.
    (tmp_path / "c" / "shard-00002.npy.tmp.4242").write_bytes(b"\x93NUMPY half")
    (tmp_path / "c" / "shard-00002.npy").write_bytes(b"\x93NUMPY half")
    _, ae = _extract(image_folder, tmp_path / "c", sample=True, seed=5)
    assert ae.calls == 2 * 2  # items 8 and 9, each with its flip
    assert not list((tmp_path / "c").glob("*.tmp.*"))
    ref, got = cache_arrays(tmp_path / "ref"), cache_arrays(tmp_path / "c")
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
    # A complete cache: rerunning encodes nothing.
    _, ae = _extract(image_folder, tmp_path / "c", sample=True, seed=5)
    assert ae.calls == 0 and len(LatentCache.open(tmp_path / "c")) == 10


def test_truncated_or_altered_shard_is_refused_then_repaired(tmp_path, image_folder):
    _extract(image_folder, tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "c")
    shard = tmp_path / "c" / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"shard-00001.npy is truncated.*rerun") as err:
        LatentCache.open(tmp_path / "c")
    assert "\n" not in str(err.value)
    _, ae = _extract(image_folder, tmp_path / "c")
    assert ae.calls == 2 * 4  # only the four images of shard 1
    ref, got = cache_arrays(tmp_path / "ref"), cache_arrays(tmp_path / "c")
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    # Same size, other bytes: only the checksum sees it.
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    LatentCache.open(tmp_path / "c")
    with pytest.raises(DataError, match="does not match its checksum"):
        LatentCache.open(tmp_path / "c", verify=True)
    (tmp_path / "c" / "shard-00002.npy").unlink()
    with pytest.raises(DataError, match="shard-00002.npy is missing"):
        LatentCache.open(tmp_path / "c")


def test_other_settings_are_refused_unless_overwrite(tmp_path, image_folder):
    _extract(image_folder, tmp_path / "c")
    for kw, why in [
        (dict(image_size=16), "image_size: 32 != 16"),
        (dict(ae=FakeAutoencoder(seed=1)), "autoencoder.identity"),
        (dict(dtype="float32"), "dtype: float16 != float32"),
        (dict(shard_size=5), "shard_size: 4 != 5"),
    ]:
        with pytest.raises(DataError, match=f"other settings \\({why}.*--overwrite"):
            _extract(image_folder, tmp_path / "c", **kw)
    assert len(LatentCache.open(tmp_path / "c")) == 10  # refusals leave the cache as it was
    other = FakeAutoencoder(seed=1)
    _extract(image_folder, tmp_path / "c", ae=other, overwrite=True)
    cache = LatentCache.open(tmp_path / "c")
    assert cache.index.autoencoder_identity == other.identity() and other.calls == 20
    # Another dataset in the same folder is another fingerprint.
    more = make_image_folder(tmp_path / "more", per_class=6)
    with pytest.raises(DataError, match="dataset.num_items: 10 != 12"):
        _extract(more, tmp_path / "c", ae=other)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a latent cache"):
        _extract(image_folder, tmp_path / "notes")
    with pytest.raises(DataError, match="is a file"):
        _extract(image_folder, tmp_path / "notes" / "a.txt")
    with pytest.raises(DataError, match="no latent cache at"):
        LatentCache.open(tmp_path / "notes")


def test_unreadable_images_are_counted_skipped_and_reported(tmp_path, image_folder):
    folder = shutil.copytree(image_folder, tmp_path / "data")
    (folder / "b" / "002.png").write_bytes(b"not a png")
    with (
        pytest.warns(UserWarning, match="unreadable"),
        pytest.raises(DataError, match=r"1 of 10 images are unreadable \(first: .*002.png\).*--max-bad-fraction 0.1"),
    ):
        _extract(folder, tmp_path / "c")
    with pytest.raises(DataError, match="incomplete"):  # no partial cache that looks complete
        LatentCache.open(tmp_path / "c")
    _, ae = _extract(folder, tmp_path / "c", max_bad_fraction=0.1)
    assert ae.calls == 0  # the shards were kept; the bad file is still bad
    cache = LatentCache.open(tmp_path / "c")
    assert len(cache) == 9 and cache.index.skipped == [str(folder / "b" / "002.png")]
    assert cache.records["y"].tolist() == [0] * 5 + [1] * 4 and cache.index.shard_rows == (4, 3, 2)
    plain, _, _ = _direct(FakeAutoencoder(), image_folder)
    # Rows skip item 7 (b/002.png): row 7 holds item 8.
    torch.testing.assert_close(cache.get(7, False), plain[8], rtol=2**-10, atol=1e-6)
    torch.testing.assert_close(cache.get(6, False), plain[6], rtol=2**-10, atol=1e-6)
    # Repaired: the shard holding it is encoded again, and the cache is whole.
    shutil.copy(image_folder / "b" / "002.png", folder / "b" / "002.png")
    _, ae = _extract(folder, tmp_path / "c", max_bad_fraction=0.1)
    assert ae.calls == 2 * 4
    cache = LatentCache.open(tmp_path / "c")
    assert len(cache) == 10 and cache.index.skipped == []


def test_posterior_samples_have_the_posterior_distribution(tmp_path, image_folder):
    _extract(image_folder, tmp_path / "mean", dtype="float32")
    _extract(image_folder, tmp_path / "s", dtype="float32", sample=True, seed=1)
    _extract(image_folder, tmp_path / "s2", dtype="float32", sample=True, seed=1, batch_size=3)
    _extract(image_folder, tmp_path / "s3", dtype="float32", sample=True, seed=2)
    mean, s = cache_arrays(tmp_path / "mean"), cache_arrays(tmp_path / "s")
    assert LatentCache.open(tmp_path / "s").index.posterior == "sample"
    ae = FakeAutoencoder()
    std = (ae.log_std.exp() * ae.scaling_factor).numpy()[None, None, :, None, None]  # (1, 1, c, 1, 1)
    eps = np.concatenate([(s[k] - mean[k]) / std for k in s if k.startswith("shard")])  # (N, 2, c, h, w)
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.03  # 20480 draws of N(0, 1)
    assert all(np.array_equal(s[k], v) for k, v in cache_arrays(tmp_path / "s2").items())
    assert not np.array_equal(s["shard-00000.npy"], cache_arrays(tmp_path / "s3")["shard-00000.npy"])

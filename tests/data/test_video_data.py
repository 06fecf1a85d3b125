"""Video data behind build_dataset: moving digits and folders, their frames, per-frame latents, the latent cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ditlab.autoencoders import PixelAutoencoder, encode_frames
from ditlab.data import build_dataset, is_video_dataset, video_frames
from ditlab.errors import DataError


def test_moving_mnist_by_name_with_its_options():
    ds = build_dataset("moving-mnist", 40, num_videos=6, num_frames=5)
    assert is_video_dataset(ds) and ds.num_frames == 5 and ds.image_size == 40 and ds.num_classes == 80
    frames, meta = ds[2]
    assert frames.shape == (1, 5, 40, 40) and frames.min() >= -1 and frames.max() <= 1
    assert meta["label"] == meta["digit"] * 8 + meta["direction"] and meta["caption"][0].startswith("a")
    assert [m["label"] for m in ds.metas()] == ds.labels().tolist()
    test = build_dataset("moving-mnist", 48, split="test", num_videos=3)
    assert test.num_frames == 8 and len(test) == 3
    classic = build_dataset("moving-mnist-classic", 64, num_videos=2)
    assert classic[0][0].shape == (1, 20, 64, 64) and classic.num_classes == 0
    assert build_dataset("moving-mnist-classic", 64, num_videos=2, num_digits=1).num_classes == 80


def test_moving_mnist_refuses_flips_colour_and_a_small_canvas():
    with pytest.raises(DataError, match="cannot be flipped"):
        build_dataset("moving-mnist", 48, flip=True, num_videos=2)
    with pytest.raises(DataError, match="grayscale"):
        build_dataset("moving-mnist", 48, channels=3, num_videos=2)
    with pytest.raises(DataError, match="at least 34 px"):
        build_dataset("moving-mnist", 32, num_videos=2)


def test_a_folder_is_read_as_videos_with_a_clip_length(tmp_path):
    pytest.importorskip("av")
    from ditlab.data.video_folder import VideoFolderDataset
    from ditlab.data.video_io import write_video

    ramp = np.broadcast_to((np.arange(9) * 20).astype(np.uint8)[:, None, None, None], (9, 16, 16, 3)).copy()
    write_video(tmp_path / "v" / "a" / "x.gif", ramp)
    write_video(tmp_path / "v" / "b" / "y.gif", ramp)
    ds = build_dataset(tmp_path / "v", 8, num_frames=4, frame_stride=2, flip=False)
    assert isinstance(ds, VideoFolderDataset) and ds.metas() == [{"label": 0}, {"label": 1}]
    frames = video_frames(ds)
    assert len(frames) == 2 and not hasattr(frames, "tensors")
    image, meta = frames[0]
    assert image.shape == (3, 8, 8) and meta == {}


def test_frames_view_is_every_frame_without_a_copy():
    ds = build_dataset("moving-mnist", 48, num_videos=3)
    frames = video_frames(ds)
    assert len(frames) == 24 and frames.channels == 1 and frames.num_classes == 0
    images, _ = frames.tensors()
    assert images.shape == (24, 1, 48, 48) and images.data_ptr() == ds.tensors()[0].data_ptr()
    assert np.array_equal(images[8 + 5, 0].numpy(), ds.videos.frames[1, 5])  # clip 1, frame 5
    assert torch.equal(frames[13][0], ds[1][0][:, 5])


def test_clips_are_encoded_frame_by_frame():
    from ditlab.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig

    torch.manual_seed(0)
    vae = KLAutoencoder(KLAutoencoderConfig.default(1, 4, 4)).eval()
    clips = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = encode_frames(vae, clips)
        per_frame = torch.stack([vae.encode(clips[:, :, f]) for f in range(3)], dim=2)
    assert z.shape == (2, 4, 3, 4, 4)
    assert torch.allclose(z, per_frame, atol=1e-6)
    assert torch.equal(encode_frames(PixelAutoencoder(1), clips), clips)


def test_latent_cache_stores_frames_of_each_clip(tmp_path):
    from ditlab.data.extract import extract_latents
    from ditlab.data.latent_cache import LatentCache

    ds = build_dataset("moving-mnist", 36, num_videos=5, num_frames=4, flip=False)
    extract_latents(ds, PixelAutoencoder(1), tmp_path / "cache", image_size=36, batch_size=2, shard_size=3,
                    dtype="float32", progress=False)
    cache = LatentCache.open(tmp_path / "cache")
    assert cache.index.latent_shape == (1, 4, 36, 36) and len(cache) == 5
    assert np.load(tmp_path / "cache" / "shard-00000.npy").shape == (3, 2, 4, 1, 36, 36)  # (n, flip, F, C, h, w)
    clip = ds[4][0]  # (1, 4, 36, 36)
    assert torch.equal(cache.get(4), clip) and torch.equal(cache.get(4, flip=True), clip.flip(-1))
    assert cache.records["y"].tolist() == ds.labels().tolist() and cache.condition().num_classes == 80

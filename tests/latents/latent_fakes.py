"""Helpers for the latent tests that must not import diffusers (spawned ranks import this file)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ditlab.autoencoders.base import Autoencoder


class FakeAutoencoder(Autoencoder):
    """A fixed random linear 'VAE': 2x2 average pool and a 1x1 conv to 4 channels (mean), with a
    fixed log-variance per channel, so posterior samples have a known closed form."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(4, 3, generator=g), requires_grad=False)  # (c, C)
        self.log_std = torch.nn.Parameter(torch.linspace(-2.0, -1.0, 4), requires_grad=False)  # (c,)
        self.image_channels, self.latent_channels, self.downsample, self.scaling_factor = 3, 4, 2, 0.5
        self.calls = 0  # images encoded, to see how much a resumed run re-encodes

    @torch.no_grad()
    def encode(self, images, sample=False, generator=None):
        self.calls += images.shape[0]
        pooled = torch.nn.functional.avg_pool2d(images.float(), 2)  # (N, 3, H/2, W/2)
        mean = torch.einsum("cd,ndhw->nchw", self.proj, pooled)  # (N, 4, H/2, W/2)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + self.log_std.exp()[None, :, None, None] * eps
        return mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents):
        raise NotImplementedError("the tests never decode")

    def identity(self) -> str:
        return f"fake:{float(self.proj.sum()):.6f}"


class FailingDataset(torch.utils.data.Dataset):
    """Wraps a dataset and raises once ``fail_at`` is requested: an extraction killed mid-way."""

    def __init__(self, dataset, fail_at: int):
        self.dataset, self.fail_at = dataset, fail_at
        for name in ("files", "root", "labels", "num_classes", "class_names", "image_size", "name", "metas"):
            setattr(self, name, getattr(dataset, name))

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i >= self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.dataset[i]


def make_image_folder(root: Path, per_class: int = 5, classes: str = "ab", seed: int = 0) -> Path:
    """Class subfolders of small random RGB images of varied size (the centre crop has work)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            h, w = 36 + 4 * (i % 3), 40 + 2 * i
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def cache_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every shard array and the labels of a cache, by file name."""
    return {p.name: np.load(p) for p in sorted(Path(path).glob("*.npy"))}


def extraction_worker(rank: int, world: int, port: int, folder: str, out: str, kwargs: dict) -> None:
    """One rank of a gloo extraction (run by torch.multiprocessing.spawn); writes how many images
    it encoded to ``out/../calls-<rank>``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from ditlab.data import build_dataset
        from ditlab.data.extract import extract_latents

        ae = FakeAutoencoder()
        extract_latents(build_dataset(folder, 32, flip=False), ae, out, progress=False, **kwargs)
        (Path(out).parent / f"calls-{rank}").write_text(str(ae.calls))
    finally:
        torch.distributed.destroy_process_group()

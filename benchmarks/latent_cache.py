"""Training throughput of DiT-S/2 at 256x256: latents from the cache vs. encoding on the fly.

The official DiT loop encodes every batch with the SD-VAE inside the training step; fast-DiT
encodes the dataset once. Both paths below run the same DiT-S/2 training step (DDPM loss with
learned sigma, AdamW, batch ``--batch-size``) and differ only in where the latents come from:

- cache: a latent cache on disk (the format ``ditlab extract-latents`` writes), read through
  ``LatentCache.dataset()`` with a fresh random flip per item;
- on the fly: a batch of 256x256 images, randomly flipped, encoded by an ``AutoencoderKL`` with the
  SD-VAE architecture (random weights: speed does not depend on them), posterior sample x 0.18215.

Image decoding (JPEG -> tensor) is left out of the on-the-fly path, so the ratio is a lower bound.
Prints steps/s for both and their ratio, measured in this run::

    python benchmarks/latent_cache.py                 # CPU, batch 4
    python benchmarks/latent_cache.py --device cuda --batch-size 64 --steps 20
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ditlab.autoencoders.diffusers_vae import DiffusersVAE
from ditlab.data.latent_cache import LatentCache, finalize, shard_ranges, write_shard
from ditlab.diffusion import create_process
from ditlab.models import create_model

SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)


def write_random_cache(root: Path, n: int, latent_shape: tuple[int, int, int], num_classes: int) -> None:
    """A cache in the extract-latents format holding random latents and class labels (the reader's speed
    does not depend on the values, and encoding n real images at 256 px would dominate this script)."""
    from ditlab.conditioning import ClassCondition
    from ditlab.data.latent_cache import FORMAT, VERSION

    g = np.random.default_rng(0)
    plan = {
        "format": FORMAT, "version": VERSION,
        "dataset": {"spec": "random", "num_items": n, "fingerprint": "-", "num_classes": num_classes},
        "image_size": 256, "autoencoder": {"identity": "random", "source": "", "scaling_factor": 0.18215},
        "latent_shape": list(latent_shape), "dtype": "float16", "posterior": "mean", "seed": 0,
        "shard_size": 1024, "flips": True,
    }
    receipts = []
    for k, (start, stop) in enumerate(shard_ranges(n, 1024)):
        latents = g.standard_normal((stop - start, 2, *latent_shape)).astype(np.float16)  # (n, 2, C, h, w)
        write_shard(root, k, start, stop, latents, list(range(start, stop)), [])
        receipts.append(json.loads((root / f"shard-{k:05d}.json").read_text()))
    metas = [{"label": int(label)} for label in g.integers(0, num_classes, n)]
    finalize(root, plan, receipts, ClassCondition(num_classes), metas)


def make_step(model, process, optimizer):
    def step(x0: torch.Tensor, y: torch.Tensor) -> float:
        loss = process.training_loss(model, x0, {"y": y}).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def flops_per_image(vae_config: dict) -> tuple[float, float]:
    """(SD-VAE encoder, DiT-S/2 forward + backward) FLOPs for one 256x256 image, counted on the
    meta device by torch's FLOP counter (no memory, no time)."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
        dit = create_model("DiT-S/2", input_size=32, num_classes=1000)
        with FlopCounterMode(display=False) as enc, torch.no_grad():
            vae.encode(torch.randn(1, 3, 256, 256))
        with FlopCounterMode(display=False) as train:
            dit(torch.randn(1, 4, 32, 32), torch.ones(1), torch.zeros(1, dtype=torch.long)).sum().backward()
    return enc.get_total_flops(), train.get_total_flops()


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Steps per second of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    device = torch.device(args.device)
    torch.manual_seed(0)
    b, num_classes, latent_shape = args.batch_size, 1000, (4, 32, 32)
    model = create_model("DiT-S/2", input_size=32, num_classes=num_classes).to(device).train()
    process = create_process("ddpm", schedule="linear", num_timesteps=1000, prediction="eps", learn_sigma=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    train_step = make_step(model, process, optimizer)
    vae = DiffusersVAE(AutoencoderKL(**SD_VAE)).to(device)
    n_steps = args.steps + args.warmup

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cache"
        root.mkdir()
        write_random_cache(root, b * n_steps, latent_shape, num_classes)
        cache = LatentCache.open(root)
        loader = iter(torch.utils.data.DataLoader(cache.dataset(), batch_size=b, shuffle=True, drop_last=True))

        def from_cache() -> None:
            x0, y = next(loader)  # (B, 4, 32, 32), (B,)
            train_step(x0.to(device), y.to(device))

        cache_sps = timed(from_cache, args.steps, args.warmup, device)

    images = torch.rand(b * n_steps, 3, 256, 256) * 2 - 1  # decoded images, (N, 3, 256, 256)
    labels = torch.randint(0, num_classes, (b * n_steps,))
    cursor = [0]
    encode_seconds = [0.0]

    def on_the_fly() -> None:
        i = cursor[0]
        cursor[0] += b
        x = images[i : i + b].to(device)
        flip = torch.rand(b, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # random horizontal flips
        t0 = time.perf_counter()
        z = vae.encode(x, sample=True)  # (B, 4, 32, 32)
        if device.type == "cuda":
            torch.cuda.synchronize()
        encode_seconds[0] += time.perf_counter() - t0
        train_step(z, labels[i : i + b].to(device))

    fly_sps = timed(on_the_fly, args.steps, args.warmup, device)
    encode_share = encode_seconds[0] / n_steps * fly_sps  # of a (timed) on-the-fly step
    print(f"DiT-S/2 256x256, batch {b}, {device.type}, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"from latent cache : {cache_sps:.3f} steps/s ({cache_sps * b:.2f} img/s)")
    print(f"encoding on the fly: {fly_sps:.3f} steps/s ({fly_sps * b:.2f} img/s), "
          f"SD-VAE encoder ~{100 * encode_share:.0f}% of each step")
    enc_flops, train_flops = flops_per_image(SD_VAE)
    print(f"FLOPs per image: SD-VAE encoder {enc_flops / 1e9:.0f} G, DiT-S/2 train step {train_flops / 1e9:.0f} G "
          f"(FLOPs on the fly / from the cache: {(enc_flops + train_flops) / train_flops:.1f}x)")
    print(f"speed-up from the cache: {cache_sps / fly_sps:.2f}x")


if __name__ == "__main__":
    main()

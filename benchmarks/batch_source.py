"""How fast the trainer's latent-cache batch source delivers batches to the GPU, against the step rate.

``ditlab.training.data_source.CacheSource`` reads each item of a global batch from the memory-mapped
shards of a latent cache (``ditlab extract-latents``), assembles the batch in pinned host memory and
copies it to the GPU without blocking. This script writes a cache of random latents in that format
(4 x 32 x 32, float16, both flips: 256-px images through the SD-VAE), reads ``--batches`` batches through
the source as the trainer does (data order, flips, copy to the device, waiting for the copies at the end),
and prints batches/s next to a training step rate (``--step-rate``, or the best DiT-XL/2 row of a
``benchmarks/gpu_train.py`` JSON), and the same reader with pageable memory and blocking copies.

    python benchmarks/batch_source.py --batch 128 --step-rate-json gpu_train.json
    python benchmarks/batch_source.py --device cpu --items 512 --batch 8 --batches 10   # smoke test
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ditlab.data.latent_cache import LatentCache
from ditlab.training.data_source import BatchOrder, CacheSource


def batches_per_second(cache: LatentCache, batch: int, count: int, device: torch.device, pinned: bool) -> float:
    """Batches/s of ``CacheSource.next()`` including the copies to ``device``."""
    order = BatchOrder(len(cache), batch, seed=0)
    source = CacheSource(cache, cache.records, order, rank=0, local_batch=batch, device=device, flip=True,
                         pin_memory=pinned)
    for _ in range(3):  # page the shards in, warm the pinned-memory cache
        source.next()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(count):
        x, y = source.next()
    sync()
    return count / (time.perf_counter() - t0)


def step_rate_from(path: str, batch: int) -> float | None:
    """Steps/s of the fastest DiT-XL/2 variant at ``batch`` in a gpu_train.py JSON (None if absent)."""
    rows = [r for r in json.loads(Path(path).read_text())["rows"]
            if "error" not in r and r.get("model", "DiT-XL/2") == "DiT-XL/2" and r.get("batch") == batch]
    return max((1e3 / r["step_ms"] for r in rows), default=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20480, help="latents in the cache (ImageNet has 1.28M)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="batches read per measurement")
    parser.add_argument("--step-rate", type=float, help="training steps/s to compare with")
    parser.add_argument("--step-rate-json", help="take the step rate from a benchmarks/gpu_train.py JSON")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from latent_cache import write_random_cache  # benchmarks/latent_cache.py: the extract-latents format

    device = torch.device(args.device)
    step_rate = args.step_rate
    if step_rate is None and args.step_rate_json and Path(args.step_rate_json).is_file():
        step_rate = step_rate_from(args.step_rate_json, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cache"
        root.mkdir()
        write_random_cache(root, args.items, (4, 32, 32), 1000)
        cache = LatentCache.open(root)
        pinned = batches_per_second(cache, args.batch, args.batches, device, pinned=device.type == "cuda")
        pageable = batches_per_second(cache, args.batch, args.batches, device, pinned=False)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "batch": args.batch, "items": args.items, "batches_per_s": pinned,
              "batches_per_s_pageable": pageable, "step_rate": step_rate,
              "ratio_to_step_rate": pinned / step_rate if step_rate else None}
    print(f"batch {args.batch}: {pinned:.0f} batches/s ({pinned * args.batch:.0f} latents/s) pinned + non-blocking, "
          f"{pageable:.0f} batches/s pageable")
    if step_rate:
        print(f"training step rate {step_rate:.2f} steps/s: the source is {pinned / step_rate:.0f}x faster (bar: 5x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

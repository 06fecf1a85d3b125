"""The GPU-side options of the batch sources give the same batches: in-memory latents resident on the
training device, latent-cache batches assembled in pinned memory (off on the CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ditlab.data.latent_cache import LatentCache
from ditlab.training.data_source import BatchOrder, CacheSource, InMemorySource

CPU = torch.device("cpu")


def _batches(source, n=7):
    return [source.next() for _ in range(n)]


def _same(a, b):
    for (xa, ra), (xb, rb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)


def test_resident_in_memory_latents_give_the_same_batches():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(40, 4, 4, 4, generator=g)
    records = {"y": torch.randint(0, 10, (40,), generator=g), "ids": torch.randint(0, 99, (40, 3), generator=g)}
    for flip in (False, True):
        plain = InMemorySource(latents, records, BatchOrder(40, 12, seed=3), 1, 4, CPU, flip=flip, resident=False)
        resident = InMemorySource(latents, records, BatchOrder(40, 12, seed=3), 1, 4, CPU, flip=flip, resident=True)
        assert resident.resident and not plain.resident
        _same(_batches(resident), _batches(plain))
    assert not InMemorySource(latents, records, BatchOrder(40, 12, seed=3), 0, 12, CPU).resident  # CPU: off


def test_cache_batches_are_the_cached_latents_and_pinning_is_off_on_the_cpu(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from latent_cache import write_random_cache
    finally:
        sys.path.pop(0)
    write_random_cache(tmp_path, 50, (4, 2, 2), 10)
    cache = LatentCache.open(tmp_path)
    order = BatchOrder(len(cache), 8, seed=1)
    source = CacheSource(cache, cache.records, order, 1, 4, CPU, flip=True)
    assert source.pin_memory is False
    for k, (x, records) in enumerate(_batches(source, 9)):  # past the end of the first epoch (6 batches)
        idx, flips = order.indices(k)[4:8], order.flips(k)[4:8]
        want = torch.stack([cache.get(int(i), bool(f)) for i, f in zip(idx, flips, strict=True)])
        assert x.shape == (4, 4, 2, 2) and torch.equal(x, want)
        assert torch.equal(records["y"], cache.records["y"][idx])

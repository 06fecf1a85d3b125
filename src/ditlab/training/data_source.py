"""Deterministic, resumable streams of training batches: (latents, condition records).

The data order is a pure function of (seed, batch number): epoch ``e`` uses the permutation drawn from
``seed`` and ``e``; global batch ``k`` is slice ``k mod batches_per_epoch`` of it (the tail of an epoch
that does not fill a batch is dropped). The only state is the number of batches consumed, so resuming
at batch ``k`` — with any number of processes — continues exactly where the run stopped. Each rank
takes its contiguous share of every global batch. Horizontal flips are a pure function of (seed, batch
number) too, drawn for the whole global batch. Each batch comes with the condition records of its
rows (``ditlab.conditioning``: e.g. ``{"y": labels}``), which the loop turns into the network's
condition; the sources never look inside them.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ditlab.conditioning import Records, cond_to, index_records
from ditlab.errors import DataError
from ditlab.seeding import Stream, derive_seed, epoch_seed


class BatchOrder:
    """Global batch ``k`` -> dataset indices, identical on every rank and after every resume."""

    def __init__(self, num_items: int, global_batch: int, seed: int):
        if num_items < global_batch:
            raise DataError(
                f"the dataset has {num_items} usable items, fewer than the global batch size {global_batch}: "
                f"lower --global_batch_size or add data"
            )
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.batches_per_epoch = num_items // global_batch
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._perm = torch.randperm(self.num_items, generator=g)
            self._epoch = epoch
        return self._perm

    def indices(self, k: int) -> torch.Tensor:
        """Dataset indices (global_batch,) of global batch ``k``."""
        epoch, pos = divmod(k, self.batches_per_epoch)
        start = pos * self.global_batch
        return self.permutation(epoch)[start : start + self.global_batch]

    def flips(self, k: int) -> torch.Tensor:
        """Which items (global_batch,) bool of global batch ``k`` are mirrored: the same on every rank."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, k, Stream.FLIPS))  # not the step draws' stream
        return torch.rand(self.global_batch, generator=g) < 0.5


class InMemorySource:
    """Batches sliced from latents held in memory (built-in datasets, encoded once).

    For a GPU (``resident``: None = when ``device`` is CUDA) the latents and records move to it once
    (MNIST's latents are 61 MB) and every batch is gathered there: no copy from the host per step. The
    batches hold the same numbers either way.
    """

    def __init__(self, latents: torch.Tensor, records: Records, order: BatchOrder, rank: int, local_batch: int,
                 device: torch.device, flip: bool = False, resident: bool | None = None):
        self.resident = device.type == "cuda" if resident is None else resident
        self.latents = latents.to(device) if self.resident else latents  # (N, C, h, w)
        self.records = cond_to(records, device) if self.resident else records  # each (N, ...)
        self.order = order
        self.rank = rank
        self.local_batch = local_batch
        self.device = device
        self.flip = flip
        self.consumed = 0
        self.skipped = 0

    def next(self) -> tuple[torch.Tensor, Records]:
        idx = self.order.indices(self.consumed)
        flips = self.order.flips(self.consumed) if self.flip else None  # drawn for the global batch
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        idx = idx[lo:hi].to(self.latents.device, non_blocking=True)
        x = self.latents[idx]
        if flips is not None:
            f = flips[lo:hi].to(self.latents.device, non_blocking=True)
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        self.consumed += 1
        return x.to(self.device, non_blocking=True), cond_to(index_records(self.records, idx), self.device)

    def close(self) -> None:
        pass


class _ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's index list of global batches ``start, start + 1, ...`` forever."""

    def __init__(self, order: BatchOrder, start: int, rank: int, local_batch: int):
        self.order, self.start, self.rank, self.local_batch = order, start, rank, local_batch

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        while True:
            yield self.order.indices(k)[lo:hi].tolist()
            k += 1


class FolderSource:
    """Batches of images decoded by DataLoader workers and encoded to latents on the fly.

    Flips are drawn in the main process from the batch number (not in the workers), so they resume
    exactly. Unreadable images are dropped from their batch and counted in ``skipped``.
    """

    def __init__(self, dataset, records: Records, autoencoder, order: BatchOrder, rank: int, local_batch: int,
                 device: torch.device, num_workers: int, flip: bool, sample_posterior: bool = False):
        from ditlab.data import collate_skip_bad

        self.dataset, self.records, self.autoencoder, self.order = dataset, records, autoencoder, order
        self.rank, self.local_batch, self.device = rank, local_batch, device
        self.num_workers, self.flip, self.sample_posterior = num_workers, flip, sample_posterior
        self._collate = collate_skip_bad
        self.consumed = 0
        self.skipped = 0
        self._it = None

    def _start(self) -> None:
        sampler = _ResumableBatchSampler(self.order, self.consumed, self.rank, self.local_batch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )
        self._it = iter(loader)

    @torch.no_grad()
    def next(self) -> tuple[torch.Tensor, Records]:
        while True:
            if self._it is None:
                self._start()
            batch = next(self._it)
            lo = self.rank * self.local_batch
            requested = self.order.indices(self.consumed)[lo : lo + self.local_batch]  # what the sampler asked for
            flips = self.order.flips(self.consumed) if self.flip else None
            self.consumed += 1
            self.skipped += batch.skipped
            if not batch.kept:
                continue  # every image of this batch was unreadable
            kept = torch.tensor(batch.kept, dtype=torch.long)
            images = batch.images.to(self.device, non_blocking=True)
            if flips is not None:
                f = flips[lo : lo + self.local_batch][kept].to(self.device)
                images = torch.where(f[:, None, None, None], images.flip(-1), images)
            latents = self.autoencoder.encode(images, sample=self.sample_posterior)
            records = index_records(self.records, requested[kept])
            return latents.float(), cond_to(records, self.device)

    def close(self) -> None:
        self._it = None


class CacheSource:
    """Batches read from a latent cache made by ``ditlab extract-latents`` (memory-mapped shards).

    Each latent is stored for the image and its horizontal flip; which one a step uses is a fresh draw
    every time, a pure function of (seed, batch number) made for the global batch and then sliced, so it
    resumes exactly at any world size. For a GPU (``pin_memory``: None = when ``device`` is CUDA) the batch
    is assembled in pinned host memory and copied without blocking, so the copy overlaps the running step
    (``benchmarks/batch_source.py``).
    """

    def __init__(self, cache, records: Records, order: BatchOrder, rank: int, local_batch: int,
                 device: torch.device, flip: bool = True, pin_memory: bool | None = None):
        self.cache, self.records, self.order, self.rank, self.local_batch = cache, records, order, rank, local_batch
        self.device, self.flip = device, flip
        self.pin_memory = device.type == "cuda" if pin_memory is None else pin_memory
        self.consumed = 0
        self.skipped = 0

    def next(self) -> tuple[torch.Tensor, Records]:
        idx = self.order.indices(self.consumed)
        flips = self.order.flips(self.consumed) if self.flip else torch.zeros(idx.shape[0], dtype=torch.bool)
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        idx, flips = idx[lo:hi], flips[lo:hi]
        items = [self.cache.get(i, f) for i, f in zip(idx.tolist(), flips.tolist(), strict=True)]
        x = torch.empty((len(items), *items[0].shape), dtype=items[0].dtype, pin_memory=self.pin_memory)
        torch.stack(items, out=x)  # (B, C, h, w)
        records = index_records(self.records, idx)
        if self.pin_memory:
            records = {key: value.pin_memory() for key, value in records.items()}
        self.consumed += 1
        return x.to(self.device, non_blocking=True), cond_to(records, self.device)

    def close(self) -> None:
        pass

"""The data order of a bucketed run: every global batch from one aspect-ratio bucket, still a pure function of
(seed, global batch number), so a resumed run (at any world size) continues exactly.

Epoch ``e`` draws, from the seed of ``e`` alone, a permutation of each bucket's items (buckets in order),
cuts each into full global batches (a bucket's tail that does not fill a batch waits for the next epoch's
permutation), and shuffles the list of all those batches; global batch ``k`` is entry ``k mod
batches_per_epoch`` of epoch ``k div batches_per_epoch``. A bucket with fewer items than a global batch is
never drawn (``unused`` lists them). Flips are drawn exactly as for unbucketed runs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ditlab.errors import DataError
from ditlab.seeding import Stream, derive_seed, epoch_seed


class BucketBatchOrder:
    """Global batch ``k`` -> dataset indices (all of one bucket) and that bucket, the same on every rank.

    Args:
        assignment: (N,) bucket index of every dataset item.
        buckets: the (H, W) sizes, for messages.
        global_batch: items per global batch.
        seed: the run's seed.
    """

    def __init__(self, assignment: torch.Tensor, buckets: Sequence[tuple[int, int]], global_batch: int, seed: int):
        self.global_batch, self.seed = global_batch, seed
        self.members = [torch.nonzero(assignment == b).flatten() for b in range(len(buckets))]  # sorted indices
        self.per_bucket = [len(m) // global_batch for m in self.members]
        self.unused = [tuple(buckets[b]) for b, m in enumerate(self.members) if 0 < len(m) < global_batch]
        self.batches_per_epoch = sum(self.per_bucket)
        if self.batches_per_epoch == 0:
            most = max(len(m) for m in self.members)
            raise DataError(f"no aspect-ratio bucket holds a full global batch of {global_batch} images (the fullest "
                            f"holds {most}): lower --global_batch_size, use fewer buckets, or add data")
        self.num_items = sum(n * global_batch for n in self.per_bucket)
        self._epoch, self._batches = -1, []

    def _epoch_batches(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            batches = []
            for b, members in enumerate(self.members):
                perm = members[torch.randperm(len(members), generator=g)]
                batches += [(b, perm[i * self.global_batch:(i + 1) * self.global_batch])
                            for i in range(self.per_bucket[b])]
            order = torch.randperm(len(batches), generator=g).tolist()
            self._batches, self._epoch = [batches[i] for i in order], epoch
        return self._batches

    def bucket(self, k: int) -> int:
        """The bucket index of global batch ``k``."""
        epoch, pos = divmod(k, self.batches_per_epoch)
        return self._epoch_batches(epoch)[pos][0]

    def indices(self, k: int) -> torch.Tensor:
        """Dataset indices (global_batch,) of global batch ``k``, all of one bucket."""
        epoch, pos = divmod(k, self.batches_per_epoch)
        return self._epoch_batches(epoch)[pos][1]

    def flips(self, k: int) -> torch.Tensor:
        """Which items (global_batch,) bool of global batch ``k`` are mirrored (as ``BatchOrder.flips``)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, k, Stream.FLIPS))
        return torch.rand(self.global_batch, generator=g) < 0.5

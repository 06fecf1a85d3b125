"""What every kind of condition does: the seam between data, training, guidance and generation.

A dataset item is ``(image, meta)``; ``meta`` is a dict of plain values (``{"label": 3}``,
``{"caption": ["a thick 7"]}``, ``{}``). A condition object turns the metas of a whole dataset into
*records* once (tensors with one row per item: what the latent cache and the batch sources keep), a
batch of records into the network's keyword tensors (``cond``), and knows the null condition used for
guidance. ``drop`` is the only place in ditlab where condition dropout happens. Everything else (data,
cache, batch sources, the loop, guidance, generation) carries the dicts and never looks inside them.

    cond = condition.batch(records_of_the_batch)            # {"y": (N,)} / {"context": ..., ...} / {}
    cond = condition.drop(cond, drop_mask)                 # training: rows -> null
    out = model(x, t, **cond)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

Records = dict[str, Tensor]
Cond = dict[str, Tensor]


def index_records(records: Records, index: Tensor) -> Records:
    """Rows ``index`` of every record tensor."""
    return {key: value[index] for key, value in records.items()}


def cat_conds(conds: Sequence[Cond]) -> Cond:
    """Concatenate condition dicts with the same keys along the batch dimension."""
    if not conds:
        return {}
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


def cond_to(cond: Mapping[str, Tensor], device: torch.device | str) -> Cond:
    """Every tensor of ``cond`` on ``device`` (non-blocking where the source is pinned)."""
    return {key: value.to(device, non_blocking=True) for key, value in cond.items()}


def cond_rows(cond: Mapping[str, Tensor], start: int, stop: int) -> Cond:
    """Rows ``start:stop`` of every tensor of ``cond``."""
    return {key: value[start:stop] for key, value in cond.items()}


class Condition(ABC):
    """One kind of condition. Subclasses: ``ClassCondition``, ``TextCondition``, ``NoCondition``.

    Attributes:
        kind: ``"class"``, ``"text"`` or ``"none"``; stored in runs and caches.
        keys: the network keyword tensors ``batch`` produces.
    """

    kind: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]

    # ------------------------------------------------------------------ data side
    @abstractmethod
    def records(self, metas: Sequence[Mapping[str, Any]]) -> Records:
        """Records (one row per item) of dataset item metas; computed once per dataset."""

    @abstractmethod
    def batch(self, records: Records, choice: Tensor | None = None) -> Cond:
        """The network's keyword tensors for a batch of records.

        ``choice`` (N,) floats in [0, 1), drawn for the global batch from the run's seed, picks among
        several options of an item (e.g. one of its captions); conditions without options ignore it.
        """

    @abstractmethod
    def null(self, n: int, device: torch.device | str = "cpu") -> Cond:
        """The null (unconditional) condition for ``n`` samples: the other half of guidance."""

    def drop(self, cond: Cond, mask: Tensor | None) -> Cond:
        """Rows of ``cond`` where ``mask`` (N,) is True replaced by the null condition.

        The one place condition dropout (for classifier-free guidance) happens; the mask is drawn for
        the global batch from the run's seed, so it does not depend on the number of processes.
        """
        if mask is None or not cond:
            return cond
        n = mask.shape[0]
        device = next(iter(cond.values())).device
        null = self.null(n, device)
        mask = mask.to(device)
        out = {}
        for key, value in cond.items():
            m = mask.reshape(n, *([1] * (value.dim() - 1)))
            out[key] = torch.where(m, null[key].to(value.dtype).expand_as(value), value)
        return out

    # ------------------------------------------------------------------ user side
    @abstractmethod
    def describe(self, cond: Cond) -> list[str]:
        """One short human-readable description per row (grid row labels, npz metadata)."""

    # ------------------------------------------------------------------ the network and persistence
    @abstractmethod
    def model_fields(self) -> dict[str, Any]:
        """DiTConfig fields this condition needs (``num_classes``; ``context_dim`` / ``pooled_dim``)."""

    def save(self, folder: Path) -> None:
        """Write what the condition keeps beside its records (e.g. cached text features) into ``folder``;
        ``condition_from_dict(d, root=folder)`` reads it back. Default: nothing to keep."""
        return None

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON description stored beside checkpoints and caches; ``condition_from_dict`` inverts it."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind")
        return f"{type(self).__name__}({fields})"

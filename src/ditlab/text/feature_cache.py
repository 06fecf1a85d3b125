"""A table of encoded captions: each distinct caption is encoded once and kept on disk.

PixArt precomputes its T5 features; so does ditlab. :func:`caption_features` takes every caption of
a dataset (duplicates welcome), encodes the distinct ones that the table for this encoder does not
hold yet, and saves the table as one safetensors file ``ROOT/text-<hash of encoder identity>.safetensors``::

    table = caption_features(cache_folder, all_captions, encoder)
    ids = table.ids(["a thick 7", "a bold 3"])          # (N,) long row numbers, stable for the file's life
    batch = table.lookup(ids)                           # the same dict as encoder.encode(...)

File layout (tensors; the metadata holds ``identity``, ``max_length``, ``version``):

- ``context`` (M, S, D) float16 -- token features of the M captions, trimmed to S = the longest
  caption's token count (``lookup`` pads back to ``max_length`` with zeros and False); float32 if
  any value would overflow float16. float16 keeps about 3 significant digits (relative error
  <= 2**-11), far below what a diffusion model can tell apart; the test measures it.
- ``context_mask`` (M, S) bool, ``pooled`` (M, P) float32.
- ``captions_utf8`` (B,) uint8 + ``caption_offsets`` (M + 1,) int64 -- the captions, so that row i
  is always caption i. Row 0 is always the empty caption (the unconditional prompt).

The file is written under a temporary name and renamed into place, so readers see the old table or
the new one, never half of one; new captions are appended, so row numbers never change. The file is
memory-mapped on open: lookups read only the rows they need.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ditlab.errors import UserError
from ditlab.files import atomic_write
from ditlab.text.encoder import TextEncoder

TABLE_VERSION = 1
FP16_MAX = 65504.0
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "BOOL": np.bool_, "U8": np.uint8, "I64": np.int64}


class FeatureCacheError(UserError):
    """A caption-feature file that belongs to another encoder, or is damaged."""


def table_path(root: str | os.PathLike, identity: str) -> Path:
    """Where the table of the encoder with ``identity`` lives under ``root``."""
    return Path(root) / f"text-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.safetensors"


class CaptionFeatures:
    """The encoded distinct captions of one encoder; see the module doc."""

    def __init__(self, path: Path, identity: str, max_length: int, captions: list[str],
                 context: np.ndarray, context_mask: np.ndarray, pooled: np.ndarray):
        self.path = path
        self.identity = identity
        self.max_length = int(max_length)
        self.captions = captions
        self.index = {c: i for i, c in enumerate(captions)}
        self._context = context  # (M, S, D), memory-mapped
        self._mask = context_mask  # (M, S)
        self._pooled = pooled  # (M, P)
        self.dim = int(context.shape[2])
        self.pooled_dim = int(pooled.shape[1])

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the token features are stored in (float16, or float32 where float16 would overflow)."""
        return torch.float16 if self._context.dtype == np.float16 else torch.float32

    def __contains__(self, caption: str) -> bool:
        return caption in self.index

    def ids(self, captions: Sequence[str]) -> torch.Tensor:
        """Row numbers (N,) long of ``captions``; a caption not in the table is a KeyError (a bug upstream)."""
        try:
            return torch.tensor([self.index[c] for c in captions], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"caption {err.args[0]!r} is not in the feature table {self.path.name}: "
                           "pass every caption to caption_features() before training") from None

    def lookup(self, ids: torch.Tensor | Sequence[int], device: torch.device | str | None = None
               ) -> dict[str, torch.Tensor]:
        """Rows ``ids`` -> ``{context (N, max_length, D) float32, context_mask (N, max_length), pooled (N, P)}``."""
        idx = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        n, s = idx.shape[0], self._context.shape[1]
        context = torch.zeros(n, self.max_length, self.dim)
        mask = torch.zeros(n, self.max_length, dtype=torch.bool)
        if n:
            order = np.argsort(idx, kind="stable")  # sorted reads are kinder to a memory map
            rows = np.empty((n, s, self.dim), dtype=self._context.dtype)
            rows[order] = self._context[idx[order]]
            context[:, :s] = torch.from_numpy(rows).float()  # (N, S, D) -> padded (N, L, D)
            mask[:, :s] = torch.from_numpy(np.ascontiguousarray(self._mask[idx]))
        pooled = torch.from_numpy(np.asarray(self._pooled[idx], dtype=np.float32).reshape(n, self.pooled_dim))
        out = {"context": context, "context_mask": mask, "pooled": pooled}
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def lookup_captions(self, captions: Sequence[str], device: torch.device | str | None = None
                        ) -> dict[str, torch.Tensor]:
        """``lookup(ids(captions))``."""
        return self.lookup(self.ids(captions), device)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get the path and map the file themselves, instead of
        # a pickled copy of every row.
        return {"path": str(self.path), "identity": self.identity}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(open_caption_features(state["path"], state["identity"]).__dict__)

    def __repr__(self) -> str:
        return f"CaptionFeatures({self.path}, {len(self)} captions, max_length={self.max_length}, dim={self.dim})"


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-map every tensor of a safetensors file (8-byte header length, JSON header, raw data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    arrays = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = _NP_DTYPES[info["dtype"]]
        count = (end - start) // np.dtype(dtype).itemsize
        shape = tuple(info["shape"])
        if count == 0:
            arrays[name] = np.zeros(shape, dtype=dtype)
        else:
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
    return arrays, meta


def open_caption_features(path: str | os.PathLike, identity: str | None = None) -> CaptionFeatures:
    """Open a table file; with ``identity``, refuse one that another encoder (or option) wrote."""
    path = Path(path)
    try:
        arrays, meta = _read_safetensors(path)
        version = int(meta.get("version", -1))
        offsets = np.asarray(arrays["caption_offsets"])
        blob = np.asarray(arrays["captions_utf8"]).tobytes()
        captions = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
        ctx, mask, pooled = arrays["context"], arrays["context_mask"], arrays["pooled"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as err:
        raise FeatureCacheError(f"caption feature file {path} is damaged ({err}): delete it and it is rebuilt") from err
    if version != TABLE_VERSION:
        raise FeatureCacheError(f"caption feature file {path} has version {version}, not {TABLE_VERSION}: delete it")
    if not (ctx.shape[0] == mask.shape[0] == pooled.shape[0] == len(captions)):
        raise FeatureCacheError(f"caption feature file {path} is inconsistent: delete it and it is rebuilt")
    if identity is not None and meta.get("identity") != identity:
        raise FeatureCacheError(
            f"caption features in {path} were made by another text encoder ({meta.get('identity')}), "
            f"not {identity}: delete the file or use the encoder that made it"
        )
    return CaptionFeatures(path, meta.get("identity", ""), int(meta["max_length"]), captions, ctx, mask, pooled)


def _distinct(captions: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(c) for c in captions))


def caption_features(root: str | os.PathLike, captions: Iterable[str], encoder: TextEncoder, *,
                     batch_size: int = 256, storage: str = "float16",
                     progress: Callable[[int, int], None] | None = None) -> CaptionFeatures:
    """The feature table of ``encoder`` under ``root`` holding every caption in ``captions``.

    Reuses the table this encoder wrote before (same :meth:`TextEncoder.identity`) and encodes only
    the distinct captions it lacks, in batches of ``batch_size``; an encoder with another identity
    gets its own file. ``storage`` is ``"float16"`` (default) or ``"float32"`` for the context.
    ``progress(done, total)`` is called after each batch.
    """
    if storage not in ("float16", "float32"):
        raise ValueError(f"storage must be 'float16' or 'float32', got {storage!r}")
    identity = encoder.identity()
    path = table_path(root, identity)
    wanted = _distinct(["", *captions])
    # Another process may extend the same file at the same moment (last rename wins): check that
    # the table on disk holds every caption, and add what it lacks again if not.
    for _ in range(3):
        table = _extend(path, identity, wanted, encoder, batch_size, storage, progress)
        if all(c in table.index for c in wanted):
            return table
    raise RuntimeError(f"caption feature file {path} keeps losing captions: is another process rewriting it?")


def _extend(path: Path, identity: str, wanted: list[str], encoder: TextEncoder, batch_size: int, storage: str,
            progress: Callable[[int, int], None] | None) -> CaptionFeatures:
    """Open ``path`` and write it again with the captions of ``wanted`` that it lacks (if any)."""
    old = None
    if path.exists():
        try:
            old = open_caption_features(path, identity)
        except FeatureCacheError:
            old = None  # damaged or an old version: rebuilt below, replaced atomically
    known = old.index if old is not None else {}
    # New rows are appended shortest first: batches of similar length waste little on padding.
    new = sorted((c for c in wanted if c not in known), key=len)
    if old is not None and not new:
        return old
    # Each batch is trimmed to the columns its captions reach, so the table is built in about the
    # memory it will take on disk rather than (captions x max_length x D) float32.
    ctx_parts, mask_parts, pooled_parts = [], [], []
    if old is not None:
        ctx_parts.append(torch.from_numpy(np.array(old._context, dtype=np.float32)))  # (M, S, D)
        mask_parts.append(torch.from_numpy(np.array(old._mask)))  # (M, S)
        pooled_parts.append(torch.from_numpy(np.array(old._pooled, dtype=np.float32)))  # (M, P)
    done = cut = 0
    for enc, n_cut in encoder.encode_batches(new, batch_size):
        cut += n_cut
        s_b = _used_columns(enc["context_mask"])
        ctx_parts.append(enc["context"][:, :s_b].float().cpu())  # (B, s_b, D)
        mask_parts.append(enc["context_mask"][:, :s_b].cpu())
        pooled_parts.append(enc["pooled"].float().cpu())
        done += len(enc["pooled"])
        if progress is not None:
            progress(done, len(new))
    if cut:
        warnings.warn(encoder.truncation_message(cut, len(new)), stacklevel=2)
    s = max(m.shape[1] for m in mask_parts)
    context = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, s - c.shape[1])) for c in ctx_parts])  # (M', S, D)
    mask = torch.cat([torch.nn.functional.pad(m, (0, s - m.shape[1])) for m in mask_parts])  # (M', S)
    pooled = torch.cat(pooled_parts)
    if storage == "float16" and context.abs().max() <= FP16_MAX:
        context = context.half()
    all_captions = (old.captions if old is not None else []) + new
    blobs = [c.encode("utf-8") for c in all_captions]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    tensors = {
        "context": context.contiguous(),
        "context_mask": mask.contiguous(),
        "pooled": pooled.contiguous(),
        "captions_utf8": torch.tensor(np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()),
        "caption_offsets": torch.from_numpy(offsets),
    }
    meta = {"version": str(TABLE_VERSION), "identity": identity, "max_length": str(encoder.max_length)}
    _save_atomic(tensors, meta, path)
    return open_caption_features(path, identity)


def _used_columns(mask: torch.Tensor) -> int:
    """1 + the last column any row of a (N, L) mask reaches (at least 1)."""
    used = mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


def _save_atomic(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> None:
    """Write the table through ``ditlab.files.atomic_write`` (temporary name, fsync, rename)."""
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


"""The latent cache: every image of a dataset encoded once by the autoencoder, with its flip.

The official DiT loop encodes each batch with the SD-VAE inside the training step; fast-DiT's main
speed-up was to encode the dataset once. This module is the on-disk format, its writer pieces
(used by ``ditlab extract-latents``) and the reader the trainer uses.

A cache directory holds::

    plan.json           the extraction's settings, written first; a resumed run must match them
    shard-00000.npy     latents of dataset items [0, S): float16/float32 array (n, 2, C, h, w),
                        [:, 0] the image and [:, 1] its horizontal flip; unreadable images have no row;
                        clips (video datasets): (n, 2, F, C, h, w), every frame encoded as an image
    shard-00000.json    the shard's receipt, written after its .npy is in place: dataset indices
                        of the rows, unreadable files, byte size and sha256 of the .npy
    records.safetensors the condition's records of all rows, shard after shard (e.g. ``y`` (N,) labels;
                        see ``ditlab.conditioning``); the condition itself is described in index.json
    condition/          what a condition keeps beside its records (a text condition's caption features)
    index.json          written last: a cache is complete exactly when index.json exists

Version 1 caches (``labels.npy`` instead of records) still load: their labels become class records.

Every file is written under a temporary name and renamed, so an interruption leaves whole shards
or no shard; a shard whose .npy does not match its receipt counts as missing.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditlab.errors import DataError
from ditlab.files import atomic_write, atomic_write_json

FORMAT = "ditlab-latent-cache"
VERSION = 2
READABLE_VERSIONS = (1, 2)
PLAN, INDEX, LABELS, RECORDS = "plan.json", "index.json", "labels.npy", "records.safetensors"
CONDITION_DIR = "condition"
OWN_FILES = (PLAN, INDEX, LABELS, RECORDS, CONDITION_DIR)  # what an --overwrite may delete
DTYPES = ("float16", "float32")
# Settings that must agree for a resumed extraction to continue the same cache.
PLAN_KEYS_THAT_MUST_MATCH = (
    "version", "condition", "dataset.num_items", "dataset.fingerprint", "image_size", "autoencoder.identity",
    "latent_shape", "dtype", "posterior", "seed", "shard_size",
)


def storage_shape(latent_shape) -> tuple[int, ...]:
    """What one row of a shard holds per flip: (C, h, w) for images, (F, C, h, w) for clips of training shape
    (C, F, h, w)."""
    shape = tuple(int(s) for s in latent_shape)
    return (shape[1], shape[0], *shape[2:]) if len(shape) == 4 else shape


def shard_stem(k: int) -> str:
    """File stem of shard ``k`` (``shard-00012``)."""
    return f"shard-{k:05d}"


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    """Dataset index ranges [start, stop) of the shards, in order."""
    return [(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half file)."""
    atomic_write(path, data)


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} ({err}); rerun `ditlab extract-latents` to rebuild it") from err


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def plan_mismatch(old: dict, new: dict) -> str | None:
    """The first setting on which two extraction plans differ, as ``key: old != new``, or None."""
    for key in PLAN_KEYS_THAT_MUST_MATCH:
        a, b = _lookup(old, key), _lookup(new, key)
        if a != b:
            return f"{key}: {a} != {b}"
    return None


def write_shard(
    root: Path, k: int, start: int, stop: int, latents: np.ndarray,
    items: list[int], bad: list[str], bad_items: list[int] = (),
) -> None:
    """Write shard ``k`` (latents (n, 2, C, h, w) of dataset items ``items``) and its receipt;
    ``bad`` names the unreadable files of the shard, ``bad_items`` their dataset indices."""
    if latents.shape[0] != len(items):
        raise ValueError(f"shard {k}: {latents.shape[0]} rows, {len(items)} items")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(latents), allow_pickle=False)
    data = buf.getvalue()
    stem = shard_stem(k)
    write_atomic(root / f"{stem}.npy", data)
    receipt = {
        "shard": k, "start": start, "stop": stop, "rows": len(items), "items": items,
        "bad": bad, "bad_items": list(bad_items), "nbytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    write_json_atomic(root / f"{stem}.json", receipt)


def read_receipt(root: Path, k: int, start: int, stop: int) -> dict | None:
    """Shard ``k``'s receipt when the shard is complete and whole, else None (it must be redone)."""
    stem = shard_stem(k)
    try:
        receipt = json.loads((root / f"{stem}.json").read_text())
        size = (root / f"{stem}.npy").stat().st_size
    except (OSError, ValueError):
        return None
    if (receipt.get("start"), receipt.get("stop"), receipt.get("nbytes")) != (start, stop, size):
        return None
    return receipt


def is_temporary(path: Path) -> bool:
    """A temporary file of ``ditlab.files.atomic_write`` (``.NAME.tmpPID.suffix``) or of older versions
    (``NAME.tmp.PID``)."""
    return (path.name.startswith(".") and ".tmp" in path.name) or ".tmp." in path.name


def remove_stale_temporaries(root: Path) -> None:
    """Delete the temporary files an interrupted extraction left behind."""
    for p in root.iterdir():
        if is_temporary(p) and p.is_file():
            p.unlink(missing_ok=True)


def finalize(root: Path, plan: dict, receipts: list[dict], condition, metas: list[dict]) -> dict:
    """Write the rows' condition records (and what the condition keeps beside them), then ``index.json``
    (which marks the cache complete); return the index.

    ``metas`` are the dataset items' metadata (``dataset.metas()``), indexed by dataset index.
    """
    from safetensors.torch import save_file

    items = [i for r in receipts for i in r["items"]]
    records = condition.records([metas[i] for i in items])
    atomic_write(root / RECORDS, lambda tmp: save_file({k: v.contiguous() for k, v in records.items()}, str(tmp)))
    condition.save(root / CONDITION_DIR)
    index = {
        **{k: v for k, v in plan.items() if k != "format"},
        "format": FORMAT,
        "num_items": len(items),
        "skipped": [b for r in receipts for b in r["bad"]],
        "shards": [
            {"file": f"{shard_stem(r['shard'])}.npy", "rows": r["rows"], "nbytes": r["nbytes"],
             "sha256": r["sha256"]}
            for r in receipts
        ],
    }
    write_json_atomic(root / INDEX, index)
    return index


def _records_v1(root: Path, raw: dict, rows: int, redo: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Records and condition description of a version-1 cache (labels.npy)."""
    try:
        labels = np.load(root / LABELS, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {root / LABELS} ({err}); {redo}") from err
    if labels.shape != (rows,):
        raise DataError(f"{root / LABELS} does not match the shards; {redo}")
    num_classes = int(raw["dataset"]["num_classes"])
    if num_classes == 0:
        return {}, {"kind": "none"}
    names = list(raw["dataset"].get("class_names", []))
    return ({"y": torch.from_numpy(labels.astype(np.int64))},
            {"kind": "class", "num_classes": num_classes, "class_names": names})


def _records_v2(root: Path, rows: int, redo: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        records = load_file(str(root / RECORDS))
    except Exception as err:  # safetensors raises its own types for damaged files
        raise DataError(f"cannot read {root / RECORDS} ({err}); {redo}") from None
    bad = [k for k, v in records.items() if v.shape[0] != rows]
    if bad:
        raise DataError(f"{root / RECORDS} does not match the shards ({bad[0]}); {redo}")
    return records


@dataclass(frozen=True)
class LatentCacheIndex:
    """What a cache holds: latent (C, h, w) (clips: (C, F, h, w)), the condition's description, and how it was
    made."""

    latent_shape: tuple[int, ...]
    autoencoder_identity: str
    autoencoder_source: str
    image_size: int
    scaling_factor: float
    num_classes: int
    class_names: list[str]
    dtype: str
    posterior: str
    dataset: str
    condition: dict = field(default_factory=dict)  # Condition.to_dict() of the records
    skipped: list[str] = field(default_factory=list)
    shard_rows: tuple[int, ...] = ()
    version: int = VERSION


class LatentCache:
    """Read access to a complete latent cache; shards are memory-mapped on first use.

    ``get(i, flip)`` returns latent ``i`` (C, h, w) (clips: (C, F, h, w)) as float32, the flipped image's when
    ``flip``;
    ``records`` holds the condition's records of every row and ``condition()`` rebuilds the condition.
    Pickles without its memory maps, so it can go to DataLoader workers.
    """

    def __init__(self, root: Path, raw: dict, records: dict[str, torch.Tensor], condition: dict):
        self.root = root
        self.raw = raw
        self.records = records
        rows = tuple(int(s["rows"]) for s in raw["shards"])
        ae = raw["autoencoder"]
        self.index = LatentCacheIndex(
            latent_shape=tuple(raw["latent_shape"]), autoencoder_identity=ae["identity"],
            autoencoder_source=ae.get("source", ""), image_size=int(raw["image_size"]),
            scaling_factor=float(ae["scaling_factor"]), num_classes=int(raw["dataset"]["num_classes"]),
            class_names=list(raw["dataset"].get("class_names", [])), dtype=raw["dtype"],
            posterior=raw["posterior"], dataset=raw["dataset"].get("spec", ""),
            condition=condition, skipped=list(raw.get("skipped", [])), shard_rows=rows,
            version=int(raw["version"]),
        )
        self._offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])  # (S + 1,)
        self._maps: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = False) -> LatentCache:
        """Open the cache at ``path``; ``verify`` also checks every shard's sha256 (reads it all).

        Raises:
            DataError: no cache there, an unfinished extraction, another format version, or a
                missing, truncated or (with ``verify``) altered shard.
        """
        root = Path(path).expanduser()
        redo = f"rerun the `ditlab extract-latents` command that made {root} to finish or repair it"
        if not (root / INDEX).is_file():
            if (root / PLAN).is_file():
                raise DataError(f"latent cache {root} is incomplete (its extraction was interrupted or failed); {redo}")
            raise DataError(
                f"no latent cache at {root}; create one with `ditlab extract-latents DATA --autoencoder A --out {root}`"
            )
        raw = read_json(root / INDEX)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") not in READABLE_VERSIONS:
            raise DataError(
                f"{root} is not a ditlab latent cache of version {' or '.join(map(str, READABLE_VERSIONS))}; "
                "re-extract it with this ditlab's `ditlab extract-latents`"
            )
        for shard in raw["shards"]:
            p = root / shard["file"]
            size = p.stat().st_size if p.is_file() else None
            if size is None:
                raise DataError(f"latent cache shard {p} is missing; {redo}")
            if size != shard["nbytes"]:
                raise DataError(
                    f"latent cache shard {p} is truncated or altered ({size} of {shard['nbytes']} bytes); {redo}"
                )
            if verify and hashlib.sha256(p.read_bytes()).hexdigest() != shard["sha256"]:
                raise DataError(f"latent cache shard {p} does not match its checksum; {redo}")
        rows = sum(int(s["rows"]) for s in raw["shards"])
        if raw["version"] == 1:
            records, condition = _records_v1(root, raw, rows, redo)
        else:
            records, condition = _records_v2(root, rows, redo), dict(raw.get("condition") or {"kind": "none"})
        return cls(root, raw, records, condition)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def condition(self, **options):
        """The condition the records belong to (``ditlab.conditioning``); ``options`` go to the condition
        (e.g. ``device``, ``text_null``)."""
        from ditlab.conditioning import condition_from_dict

        return condition_from_dict(self.index.condition, root=self.root / CONDITION_DIR, **options)

    def _shard(self, k: int) -> np.ndarray:
        mm = self._maps.get(k)
        if mm is None:
            p = self.root / self.raw["shards"][k]["file"]
            try:
                mm = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(
                    f"cannot map latent cache shard {p} ({err}); rerun `ditlab extract-latents` to repair it"
                ) from err
            want = (self.index.shard_rows[k], 2, *storage_shape(self.index.latent_shape))
            if mm.shape != want or mm.dtype != np.dtype(self.index.dtype):
                raise DataError(
                    f"latent cache shard {p} holds {mm.dtype}{list(mm.shape)}, "
                    f"expected {self.index.dtype}{list(want)}; "
                    "rerun `ditlab extract-latents` to repair it"
                )
            self._maps[k] = mm
        return mm

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, row) of latent ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"latent index {i} out of range for a cache of {len(self)}")
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return k, i - int(self._offsets[k])

    def get(self, i: int, flip: bool = False) -> torch.Tensor:
        """Latent ``i`` (C, h, w) (clips: (C, F, h, w)) as float32; ``flip`` picks the horizontally flipped one."""
        k, row = self.locate(int(i))
        z = torch.from_numpy(np.array(self._shard(k)[row, int(bool(flip))], dtype=np.float32))
        return z.transpose(0, 1).contiguous() if z.dim() == 4 else z  # stored (F, C, h, w) -> (C, F, h, w)

    def check_compatible(
        self, autoencoder_identity: str, image_size: int, latent_shape: tuple[int, ...] | list[int]
    ) -> None:
        """Refuse (one-line DataError) a cache made by another autoencoder, size or latent shape."""
        ix = self.index
        redo = "re-extract with `ditlab extract-latents` using this run's settings, or match the run to the cache"
        if autoencoder_identity != ix.autoencoder_identity:
            raise DataError(
                f"latent cache {self.root} was encoded by autoencoder {ix.autoencoder_identity} "
                f"({ix.autoencoder_source}), but this run uses {autoencoder_identity}; {redo}"
            )
        if int(image_size) != ix.image_size:
            raise DataError(
                f"latent cache {self.root} holds {ix.image_size}px images but this run trains at {image_size}px; {redo}"
            )
        if tuple(latent_shape) != tuple(ix.latent_shape):
            raise DataError(
                f"latent cache {self.root} holds latents of shape {list(ix.latent_shape)} but this run expects "
                f"{list(latent_shape)}; {redo}"
            )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened in each process
        return state

    def __repr__(self) -> str:
        ix = self.index
        return (
            f"LatentCache({str(self.root)!r}, n={len(self)}, latent={list(ix.latent_shape)}, "
            f"size={ix.image_size}, autoencoder={ix.autoencoder_identity})"
        )

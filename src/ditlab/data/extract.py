"""Encode a dataset once into the sharded latent cache (``ditlab.data.latent_cache``).

Each image is encoded together with its horizontal flip, so training can pick either at random.
Rerunning after an interruption encodes only the shards that are missing. Inside a
``torch.distributed`` group every rank encodes the shards ``k`` with ``k % world_size == rank`` (no two
ranks write one file, every shard has an owner), and rank 0 writes the records and the index once all
shards are in place. ``ditlab extract-latents`` is the command around it.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from ditlab.autoencoders.base import encode_frames
from ditlab.data import latent_cache as lc
from ditlab.errors import ConfigError, DataError
from ditlab.runlock import LOCK_NAME


def _dataset_fingerprint(dataset) -> str:
    """Hash of what the dataset holds (file names relative to its root and item metadata), not where."""
    import json

    h = hashlib.sha256()
    files = getattr(dataset, "files", None)
    metas = dataset.metas()
    if files is not None:
        root = str(getattr(dataset, "root", ""))
        for f, meta in zip(files, metas, strict=True):
            h.update(f"{os.path.relpath(f, root) if root else f}\t{json.dumps(meta, sort_keys=True)}\n".encode())
    else:
        h.update(f"{getattr(dataset, 'name', type(dataset).__name__)}:{len(dataset)}\n".encode())
        for meta in metas:
            h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _batch_generator(seed: int, first: int, device: torch.device) -> torch.Generator:
    """The posterior-sampling generator of the batch starting at dataset index ``first``: batches
    start at fixed offsets of fixed shards, so samples do not depend on the number of ranks."""
    digest = hashlib.sha256(f"{seed}:{first}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:7], "little"))


class _Indexed(torch.utils.data.Dataset):
    """Pairs each item (or ``None`` for an unreadable file) with its dataset index."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


def _collate(items):
    """-> (good indices, images (n, C, H, W) or None, bad indices)."""
    good = [(i, it) for i, it in items if it is not None]
    bad = [i for i, it in items if it is None]
    if not good:
        return [], None, bad
    images = torch.stack([it[0] for _, it in good])  # (n, C, H, W)
    return [i for i, _ in good], images, bad


def _bad_file_now_readable(dataset, receipt: dict) -> bool:
    """True when a file the shard skipped as unreadable loads now (the user repaired it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dataset warns about files it skips; they are known here
        for i in receipt.get("bad_items", []):
            try:
                if i < len(dataset) and dataset[i] is not None:
                    return True
            except Exception:  # still broken, in whatever way
                pass
    return False


def _prepare(root: Path, plan: dict, overwrite: bool, rank: int, barrier) -> None:
    """Check ``root`` against ``plan`` (every rank, so all refuse alike), then let rank 0 set it up."""
    old = None
    if root.exists() and not root.is_dir():
        raise DataError(f"--out {root} is a file; pass a folder for the latent cache")
    if (root / lc.PLAN).is_file():
        old = lc.read_json(root / lc.PLAN)
        why = lc.plan_mismatch(old, plan)
        if why and not overwrite:
            raise DataError(
                f"latent cache {root} was started with other settings ({why}); rerun with the original "
                "settings, choose another --out, or pass --overwrite to discard it"
            )
    elif root.is_dir() and any(p.name != LOCK_NAME for p in root.iterdir()):
        raise DataError(f"--out {root} exists and is not a latent cache; pass a new or empty folder")
    barrier()  # every rank has read the old plan before rank 0 changes anything
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if old is not None and (overwrite and lc.plan_mismatch(old, plan)):
            for p in root.iterdir():
                if p.name in lc.OWN_FILES or p.name.startswith("shard-") or lc.is_temporary(p):
                    if p.is_dir():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
        lc.remove_stale_temporaries(root)
        lc.write_json_atomic(root / lc.PLAN, plan)
    barrier()


def extract_latents(
    dataset, autoencoder, out: str | os.PathLike, *, image_size: int, batch_size: int = 32,
    shard_size: int = 1024, dtype: str = "float16", sample: bool = False, seed: int = 0,
    num_workers: int = 0, max_bad_fraction: float = 0.01, overwrite: bool = False,
    progress: bool = True, device: str | torch.device = "cpu", dataset_spec: str = "",
    autoencoder_spec: str = "", condition=None, text_encoder: str = "minilm", text_max_length: int | None = None,
) -> dict:
    """Encode ``dataset`` (items ``(image (C, H, W) in [-1, 1], meta)`` or ``None``) and the
    horizontal flip of every image with ``autoencoder`` into a latent cache at ``out``; the rows'
    condition records (``condition``, default: what the dataset supports) are stored with them; for a
    captioned dataset that is a text condition whose caption features (``text_encoder``,
    ``text_max_length``) are encoded once into ``$DITLAB_CACHE/text-features`` and stored in the cache.
    Video datasets (items ``(clip (C, F, H, W), meta)``) are encoded frame by frame and stored as
    (F, C, h, w) per clip.

    Resumes a cache with the same settings (only missing shards are encoded). Inside an
    initialised ``torch.distributed`` group, each rank encodes its own shards. Returns the index.

    Raises:
        DataError: ``out`` holds something else or a cache with other settings, or more than
            ``max_bad_fraction`` of the images are unreadable (the cache is then left incomplete).
    """
    from ditlab.conditioning import condition_for_dataset

    if condition is None:
        from ditlab.data.builtin import cache_dir

        condition = condition_for_dataset(dataset, text_encoder=text_encoder, text_max_length=text_max_length,
                                          root=cache_dir() / "text-features", device=device)
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    barrier = dist.barrier if world > 1 else (lambda: None)
    if dtype not in lc.DTYPES:
        raise ConfigError(f"cache dtype must be one of {', '.join(lc.DTYPES)}, got {dtype!r}")
    if image_size % autoencoder.downsample:
        raise ConfigError(
            f"--image-size {image_size} is not a multiple of the autoencoder's downsampling factor "
            f"{autoencoder.downsample}; "
            f"pick e.g. {max(1, image_size // autoencoder.downsample) * autoencoder.downsample}"
        )
    root = Path(out).expanduser()
    device = torch.device(device)
    autoencoder = autoencoder.to(device).eval()
    side = image_size // autoencoder.downsample
    latent_shape = [int(autoencoder.latent_channels), side, side]
    frames = int(getattr(dataset, "num_frames", 0) or 0)
    if frames:  # clips: the training shape (C, F, h, w); shards store (F, C, h, w) per clip
        latent_shape.insert(1, frames)
    n = len(dataset)
    plan = {
        "format": lc.FORMAT, "version": lc.VERSION,
        "dataset": {
            "spec": dataset_spec, "num_items": n, "fingerprint": _dataset_fingerprint(dataset),
            "num_classes": int(getattr(dataset, "num_classes", 0)),
            "class_names": list(getattr(dataset, "class_names", [])),
        },
        "image_size": image_size,
        "autoencoder": {
            "identity": autoencoder.identity(), "source": autoencoder_spec,
            "class": type(autoencoder).__name__, "scaling_factor": float(autoencoder.scaling_factor),
        },
        "latent_shape": latent_shape, "dtype": dtype,
        "posterior": "sample" if sample else "mean", "seed": seed if sample else 0,
        "shard_size": shard_size, "flips": True, "condition": condition.to_dict(),
    }
    _prepare(root, plan, overwrite, rank, barrier)

    ranges = lc.shard_ranges(n, shard_size)
    todo = []
    for k, (start, stop) in enumerate(ranges):
        if k % world != rank:
            continue
        receipt = lc.read_receipt(root, k, start, stop)
        if receipt is None or _bad_file_now_readable(dataset, receipt):
            todo.append(k)
    if todo:  # a cache with shards to (re)do must not look complete, whichever rank finds them
        (root / lc.INDEX).unlink(missing_ok=True)
    if rank == 0:
        print(f"extract-latents: {n} images -> {root}: {len(ranges)} shards of {shard_size}, "
              f"{world} rank(s), rank 0 encodes {len(todo)}", file=sys.stderr)
    _encode_shards(dataset, autoencoder, root, ranges, todo, latent_shape, batch_size, dtype, sample,
                   seed, num_workers, device, progress and rank == 0, f"encoding (rank 0 of {world})")
    barrier()

    receipts = [lc.read_receipt(root, k, s, e) for k, (s, e) in enumerate(ranges)]
    missing = [k for k, r in enumerate(receipts) if r is None]
    if missing:  # a bug or a rank that failed: never finish a cache with gaps
        raise RuntimeError(f"shards {missing[:5]} of {root} are missing after extraction")
    bad = [b for r in receipts for b in r["bad"]]
    if len(bad) > max_bad_fraction * n:
        if rank == 0:
            (root / lc.INDEX).unlink(missing_ok=True)
        need = math.ceil(1000 * len(bad) / n) / 1000
        raise DataError(
            f"{len(bad)} of {n} images are unreadable (first: {bad[0]}); repair them and rerun, "
            f"or pass --max-bad-fraction {need:g} to skip them (the encoded shards are kept)"
        )
    index = lc.finalize(root, plan, receipts, condition, dataset.metas()) if rank == 0 else None
    barrier()  # the index is in place on every rank's return
    if rank == 0:
        note = (
            f"; skipped {len(bad)} unreadable image(s): {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
            if bad else ""
        )
        print(f"extract-latents: wrote {n - len(bad)} latents x 2 flips {latent_shape} {dtype} to {root}{note}",
              file=sys.stderr)
    return index if index is not None else lc.read_json(root / lc.INDEX)


def _encode_shards(dataset, autoencoder, root, ranges, todo, latent_shape, batch_size, dtype, sample,
                   seed, num_workers, device, progress, desc) -> None:
    """Encode shards ``todo`` batch by batch; a shard is written once all its batches are done."""
    from tqdm import tqdm

    batches = []  # (shard, dataset indices) in order; batches never straddle two shards
    for k in todo:
        start, stop = ranges[k]
        batches += [(k, list(range(b, min(b + batch_size, stop)))) for b in range(start, stop, batch_size)]
    if not batches:
        return
    loader = torch.utils.data.DataLoader(
        _Indexed(dataset), batch_sampler=[idx for _, idx in batches], collate_fn=_collate,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )
    bar = tqdm(total=sum(len(idx) for _, idx in batches), unit="img", disable=not progress,
               desc=desc, dynamic_ncols=True, file=sys.stderr)
    np_dtype = np.dtype(dtype)
    shard_rows, items, bad = [], [], []
    try:
        for (k, idx), (good, images, bad_idx) in zip(batches, loader, strict=True):
            if images is not None:
                x = images.to(device, non_blocking=True)
                x = torch.cat([x, x.flip(-1)])  # (2B, C, H, W): the images, then their mirror images
                gen = _batch_generator(seed, idx[0], device) if sample else None
                z = encode_frames(autoencoder, x, sample=sample, generator=gen)  # (2B, c, h, w) / (2B, c, F, h, w)
                z = z.reshape(2, len(good), *z.shape[1:]).transpose(0, 1)  # (B, 2, c, h, w) / (B, 2, c, F, h, w)
                if z.dim() == 6:
                    z = z.transpose(2, 3)  # (B, 2, F, c, h, w): each clip's frames one after another
                shard_rows.append(z.float().cpu().numpy().astype(np_dtype))
            items += good
            bad += bad_idx
            bar.update(len(idx))
            if idx[-1] == ranges[k][1] - 1:  # last batch of shard k
                # (n, 2, c, h, w); a shard of unreadable files only keeps its receipt and an empty array
                empty = (0, 2, *lc.storage_shape(latent_shape))
                latents = np.concatenate(shard_rows) if shard_rows else np.zeros(empty, np_dtype)
                files = getattr(dataset, "files", None)
                names = [str(files[i]) if files is not None else f"item {i}" for i in bad]
                lc.write_shard(root, k, *ranges[k], latents, items, names, bad_items=bad)
                shard_rows, items, bad = [], [], []
    finally:
        bar.close()

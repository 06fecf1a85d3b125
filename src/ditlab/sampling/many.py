"""Many samples for FID, split over torchrun ranks and resumable (``ditlab sample-many``).

Sample i has noise seed ``seed + i`` and, for class models, a uniformly random class label fixed by
``(seed, i)`` (``random_labels``), so the set is the same on any number of processes and batch sizes.
Rank r makes the indices i with i % WORLD_SIZE == r, writing each as ``OUT/images/<i>_class<c>.png``
(temporary name, then rename: never a half-written file). Rerunning skips the samples that exist, with
any number of ranks; when every sample is there, rank 0 writes ``OUT/samples.npz`` (ADM layout:
``arr_0`` N x H x W x 3 uint8, ``labels`` (N,)), streamed so that 50k samples never sit in memory.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from ditlab.files import atomic_write, atomic_write_json
from ditlab.runlock import FolderLock
from ditlab.seeding import counter_uint64

MANIFEST = "sample_many.json"
NPZ_NAME = "samples.npz"


def random_labels(seed: int, indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Uniformly random class labels (N,) of sample ``indices``: label i is fixed by (seed, i) alone.

    Drawn from a counter-based generator, so any subset of indices, on any rank and in any order, gets
    the labels the full set has. The modulo bias is below 1e-18. Unconditional models
    (``num_classes == 0``) get zeros.
    """
    if num_classes <= 0:
        return torch.zeros(len(indices), dtype=torch.long)
    return torch.tensor([counter_uint64(seed, int(i)) % num_classes for i in indices], dtype=torch.long)


@dataclass
class SampleManyResult:
    generated: list[int]  # the indices this rank made in this call (finished ones are skipped)
    npz: Path | None  # rank 0: the assembled .npz; other ranks: None


def sample_name(index: int, label: int | None) -> str:
    """File name of sample ``index``: ``000042_class7.png`` (no class part for unconditional models)."""
    return f"{index:06d}" + (f"_class{label}" if label is not None else "") + ".png"


def _join_group():
    """(rank, world, joined) under torchrun; a CPU (gloo) group, only for the final barrier."""
    import torch.distributed as dist

    from ditlab.training.distributed import launched_by_torchrun

    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if dist.is_initialized():
        return rank, world, False
    # Ranks may finish minutes apart after an uneven resume: a long timeout for the one barrier.
    dist.init_process_group("gloo", timeout=timedelta(hours=12))
    return rank, world, True


def _check_manifest(out: Path, manifest: dict, rank: int) -> None:
    """Refuse to mix samples of different settings in one folder; rank 0 writes the manifest once."""
    from ditlab.errors import UserError

    path = out / MANIFEST
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"'{path}' is damaged: delete the folder '{out}' or pass another --out") from None
        for key, value in manifest.items():
            if saved.get(key) != value:
                raise UserError(
                    f"'{out}' holds samples made with {key}={saved.get(key)!r}, not {value!r}: "
                    f"pass another --out, or delete that folder"
                )
        return
    if rank == 0:
        atomic_write_json(path, manifest)


def sample_many(
    source: str | Path,
    num: int,
    out: str | Path,
    *,
    seed: int = 0,
    cfg: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    use_ema: bool = True,
    device: str = "auto",
    progress: bool = True,
    autoencoder: str | None = None,
) -> SampleManyResult:
    """Make the missing samples of ``0..num-1`` that belong to this rank, then (rank 0) the ``.npz``.

    ``source`` is a run directory or a model folder (``autoencoder`` as for ``Pipeline.load``). Every
    process torchrun starts calls this; a plain process is rank 0 of 1.
    """
    from ditlab.devices import pick_device
    from ditlab.errors import UserError
    from ditlab.sampling.outputs import check_writable, save_png
    from ditlab.sampling.pipeline import Pipeline, check_sampling

    for flag, value, low in (("--num", num, 1), ("--batch-size", batch_size, 1), ("--steps", steps, 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if cfg is not None and cfg < 0:
        raise UserError(f"--cfg must be >= 0, got {cfg}")
    out = Path(out)
    check_writable(out / MANIFEST)
    rank, world, joined = _join_group()
    lock = FolderLock(out, flag="--out", what="output folder")
    try:
        lock.acquire_on_rank0()  # one job per folder (each rank writes its own samples; rank 0 holds the lock)
        dev = pick_device(device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        pipe = Pipeline.load(source, ema=use_ema, device=dev, autoencoder=autoencoder)
        if pipe.condition.kind == "text":
            raise UserError("sample-many draws random class labels: it needs a class or unconditional model, "
                            "not a text model; use `ditlab sample --prompts-file` for text models")
        cfg = pipe.defaults.cfg_scale if cfg is None else cfg
        steps = steps or pipe.defaults.steps
        sampler = check_sampling(pipe.process, sampler or pipe.defaults.sampler, steps)
        num_classes = pipe.condition.num_classes if pipe.condition.kind == "class" else 0
        _check_manifest(out, {
            "checkpoint": pipe.info.get("checkpoint", pipe.info.get("source")), "step": pipe.info.get("step"),
            "ema": use_ema, "seed": seed, "cfg": cfg, "sampler": sampler, "steps": steps,
            "latent_shape": list(pipe.latent_shape), "num_classes": num_classes,
        }, rank)
        images_dir = out / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        labels = random_labels(seed, range(num), num_classes)  # (num,)
        names = [sample_name(i, int(labels[i]) if num_classes else None) for i in range(num)]
        done = set(os.listdir(images_dir))
        mine = [i for i in range(rank, num, world) if names[i] not in done]  # disjoint over ranks, no gaps
        bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), desc=f"sample-many rank 0/{world}", unit="img")
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            got = pipe(labels=labels[batch].tolist() if num_classes else None, num=len(batch), seed=seed,
                       indices=batch, sampler=sampler, steps=steps, cfg_scale=cfg, batch_size=batch_size)
            for i, image in zip(batch, got.images, strict=True):
                save_png(image, images_dir / names[i])  # temporary name, then rename
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # every rank's share is on disk
        npz = None
        if rank == 0:
            missing = [i for i in range(num) if not (images_dir / names[i]).is_file()]
            if missing:
                raise UserError(f"{len(missing)} of {num} samples are missing from '{images_dir}' (e.g. "
                                f"{names[missing[0]]}): rerun the same command to make them")
            npz = write_adm_npz(out / NPZ_NAME, [images_dir / n for n in names],
                                labels.numpy() if num_classes else None)
            for stale in images_dir.glob(".*.tmp*"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
        return SampleManyResult(mine, npz)
    finally:
        lock.release()
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    from ditlab.errors import UserError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3); gray is replicated
    except OSError as err:
        raise UserError(f"cannot read sample {path} ({err}): delete it and rerun the same command") from None


def write_adm_npz(path: str | Path, files: list[Path], labels: np.ndarray | None,
                  read: Callable[[Path], np.ndarray] = _read_rgb) -> Path:
    """ADM ``.npz`` from image files: ``arr_0`` (N, H, W, 3) uint8 and ``labels`` (N,) int64.

    ``arr_0`` is streamed into the zip one image at a time (50k 256-px samples are 10 GB), written
    to a temporary name and renamed. All images must have one size.
    """
    from ditlab.errors import UserError

    first = read(files[0])
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(files), *first.shape)}

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for file in files:
                    image = first if file == files[0] else read(file)
                    if image.shape != first.shape:
                        raise UserError(f"sample {file} is {image.shape}, not {first.shape} like the first: "
                                        f"delete the folder's images and rerun")
                    f.write(np.ascontiguousarray(image).tobytes())
            if labels is not None:
                with zf.open("labels.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))

    atomic_write(path, write)
    return Path(path)

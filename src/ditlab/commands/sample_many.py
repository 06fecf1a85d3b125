"""``ditlab sample-many RUN_DIR --num 50000 --out DIR``: many samples for FID, split over torchrun ranks.

Sample i has noise seed ``--seed + i`` and a uniformly random class label fixed by ``(--seed, i)``
(``periodic_eval.sample_labels``), so the set is the same on any number of processes and batch sizes.
Rank r makes the indices i with i % WORLD_SIZE == r, writing each as ``DIR/images/<i>_class<c>.png``
(temporary name, then rename: never a half-written file). Rerunning skips the samples that exist,
with any number of ranks; when every sample is there, rank 0 writes ``DIR/samples.npz`` (ADM layout:
``arr_0`` N x H x W x 3 uint8, ``labels`` (N,)), streamed so that 50k samples never sit in memory.

    torchrun --nproc_per_node 8 $(which ditlab) sample-many runs/xl2 --num 50000 --out samples/xl2
"""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from ditlab.runlock import FolderLock

NAME = "sample-many"
HELP = "N samples with random class labels for FID: PNGs + one ADM .npz, split over torchrun ranks, resumable"
MANIFEST = "sample_many.json"
NPZ_NAME = "samples.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory written by `ditlab train`")
    parser.add_argument("--num", type=int, default=50_000, help="number of samples (default 50000)")
    parser.add_argument("--out", required=True, help="output folder: images/*.png, samples.npz, sample_many.json")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses noise seed SEED + i; labels follow SEED")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the run's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass on each rank")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")


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
        tmp = path.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path)


def sample_many(
    run_dir: str | Path,
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
) -> SampleManyResult:
    """Make the missing samples of ``0..num-1`` that belong to this rank, then (rank 0) the ``.npz``.

    Every process torchrun starts calls this; a plain process is rank 0 of 1.
    """
    import torch

    from ditlab.errors import UserError
    from ditlab.training.generate import check_sampling, check_writable, generate, save_png
    from ditlab.training.periodic_eval import sample_labels
    from ditlab.training.setup import load_run, pick_device

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
        run = load_run(run_dir, use_ema=use_ema, device=dev)
        cfg = run.config.cfg_scale if cfg is None else cfg
        steps = steps or run.config.sample_steps
        sampler = sampler or run.config.sampler or run.process.default_sampler
        check_sampling(run.process, sampler, steps)
        _check_manifest(out, {
            "checkpoint": run.checkpoint.name, "step": run.step, "ema": use_ema, "seed": seed, "cfg": cfg,
            "sampler": sampler, "steps": steps, "latent_shape": list(run.latent_shape),
            "num_classes": run.num_classes,
        }, rank)
        images_dir = out / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        labels = sample_labels(seed, range(num), run.num_classes)  # (num,)
        names = [sample_name(i, int(labels[i]) if run.num_classes else None) for i in range(num)]
        done = set(os.listdir(images_dir))
        mine = [i for i in range(rank, num, world) if names[i] not in done]  # disjoint over ranks, no gaps
        bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), desc=f"sample-many rank 0/{world}", unit="img")
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            images = generate(run.model, run.process, run.autoencoder, run.latent_shape, labels[batch],
                              [seed + i for i in batch], num_classes=run.num_classes, sampler=sampler,
                              steps=steps, cfg_scale=cfg, batch_size=batch_size, device=dev)
            for i, image in zip(batch, images, strict=True):
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
                              labels.numpy() if run.num_classes else None)
            for stale in images_dir.glob(".*.tmp"):  # left by a process killed mid-write
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

    path = Path(path)
    first = read(files[0])
    tmp = path.with_name(f".{path.name}.tmp")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(files), *first.shape)}
    try:
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def run(args: argparse.Namespace) -> int:
    result = sample_many(args.run_dir, args.num, args.out, seed=args.seed, cfg=args.cfg, sampler=args.sampler,
                         steps=args.steps, batch_size=args.batch_size, use_ema=not args.no_ema, device=args.device)
    if result.npz is not None:
        print(f"made {len(result.generated)} new samples here; {args.num} samples in {Path(args.out) / 'images'}, "
              f"npz: {result.npz}")
    return 0

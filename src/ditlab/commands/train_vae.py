"""``ditlab train-vae``: train ditlab's small KL-autoencoder on a dataset and save it.

The result (``config.json`` + ``model.safetensors``, with the measured scaling factor) is what
``ditlab train --autoencoder DIR`` and ``ditlab extract-latents --autoencoder DIR`` take.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from ditlab.errors import ConfigError
from ditlab.runlock import LOCK_NAME, lock_folder

NAME = "train-vae"
HELP = "Train a small KL-autoencoder (the latent space for DiT) on a dataset and save it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="'mnist', 'digits', or an image folder (one subfolder per class, or flat)")
    parser.add_argument("--out", required=True, help="folder to write config.json + model.safetensors into")
    parser.add_argument("--image-size", type=int, default=32, help="side of the training images (default 32)")
    parser.add_argument("--channels", type=int, default=None, help="1 or 3 (default: 1 for built-ins, 3 for folders)")
    parser.add_argument("--downsample", type=int, default=4, help="spatial factor 1, 2, 4 or 8 (default 4)")
    parser.add_argument("--latent-channels", type=int, default=4, help="latent channels (default 4)")
    parser.add_argument("--steps", type=int, default=1600, help="optimizer steps (default 1600)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="images per step (default 16: more, smaller steps train faster)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    parser.add_argument("--kl-weight", type=float, default=1e-5, help="weight of the KL term (default 1e-5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding processes for folders (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU if there is one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an autoencoder already saved at --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_args(args: argparse.Namespace) -> None:
    if args.downsample not in (1, 2, 4, 8):
        raise ConfigError(f"--downsample must be 1, 2, 4 or 8, got {args.downsample}")
    for name in ("image_size", "latent_channels", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.image_size % args.downsample:
        raise ConfigError(
            f"--image-size {args.image_size} is not divisible by --downsample {args.downsample}: "
            "pick a size that is a multiple of it"
        )
    if not args.lr > 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    if args.kl_weight < 0:
        raise ConfigError(f"--kl-weight must be 0 or more, got {args.kl_weight}")
    if args.channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {args.channels}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")


def _prepare_out(out: Path, overwrite: bool) -> bool:
    """Check that ``out`` can take an autoencoder; returns True when this call created it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder for the autoencoder")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        if not (out / "config.json").exists() and not (out / "model.safetensors").exists():
            raise ConfigError(f"--out {out} exists and holds other files: pass a new or empty folder")
        if not overwrite:
            raise ConfigError(
                f"--out {out} already holds an autoencoder: pass --overwrite to replace it, or another --out"
            )
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"cannot write to --out {out} ({err.strerror or err}): choose a writable folder") from None
    return created


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    import torch

    from ditlab.data import build_dataset

    dataset = build_dataset(args.data, args.image_size, channels=args.channels)
    device = args.device
    if device is not None:
        try:
            device = torch.device(device)
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise ConfigError(
                f"--device {args.device} is not usable here ({str(err).splitlines()[0]}): "
                "use cpu or an available GPU"
            ) from None
    out = Path(args.out).expanduser()
    with lock_folder(out, flag="--out", what="autoencoder folder") as lock:  # one writer per folder
        created = _prepare_out(out, args.overwrite) or lock.created
        return _train_and_report(args, dataset, device, out, created)


def _train_and_report(args: argparse.Namespace, dataset, device, out: Path, created: bool) -> int:
    from ditlab.autoencoders import train_autoencoder
    from ditlab.autoencoders.train import reconstruction_error
    from ditlab.data import BUILTIN_DATASETS, build_dataset

    print(f"train-vae: {dataset!r} -> {out} (downsample {args.downsample}, {args.latent_channels} latent channels)")
    start = time.time()
    try:
        model = train_autoencoder(
            dataset, out, downsample=args.downsample, latent_channels=args.latent_channels, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight, seed=args.seed,
            progress=not args.no_progress, num_workers=args.workers, device=device,
        )
    except BaseException:
        if created:  # leave nothing behind from a run that did not finish
            shutil.rmtree(out, ignore_errors=True)
        raise
    held_out = dataset
    if isinstance(args.data, str) and args.data in BUILTIN_DATASETS:
        held_out = build_dataset(args.data, args.image_size, split="test", channels=args.channels)
    mse = reconstruction_error(model, held_out)
    c, h, w = model.latent_shape(args.image_size)
    print(
        f"saved {out}: latents {c}x{h}x{w}, scaling factor {model.scaling_factor:.4f}, "
        f"reconstruction MSE {mse:.5f} ({'test split' if held_out is not dataset else 'training images'}, "
        f"pixels in [-1, 1]), {time.time() - start:.0f} s"
    )
    bad = dataset.bad_files() if hasattr(dataset, "bad_files") else []
    if bad:
        print(f"skipped {len(bad)} unreadable image(s), e.g. {', '.join(bad[:3])}")
    return 0

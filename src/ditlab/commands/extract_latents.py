"""``ditlab extract-latents``: encode a dataset once into a sharded latent cache.

The work is ``ditlab.data.extract.extract_latents``; this module parses the command line and, under
``torchrun``, joins the ranks. Rerunning the same command after an interruption encodes only the shards
that are missing.
"""
from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

import torch

from ditlab.data import latent_cache as lc
from ditlab.errors import ConfigError
from ditlab.runlock import lock_folder_on_rank0

NAME = "extract-latents"
HELP = "Encode a dataset (each image and its horizontal flip) once into a resumable latent cache."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="image folder (one subfolder per class, or flat) or a built-in dataset name")
    parser.add_argument("--autoencoder", required=True,
                        help="diffusers AutoencoderKL folder, sd-vae-ft-ema / sd-vae-ft-mse (local HF cache), "
                             "a `ditlab train-vae` folder, or 'pixel'")
    parser.add_argument("--image-size", type=int, default=256, help="side of the centre-cropped images (default 256)")
    parser.add_argument("--out", required=True, help="cache folder to create or resume")
    parser.add_argument("--num-frames", type=int, default=0,
                        help="videos: frames per clip (a folder is read as videos when > 0; moving-mnist: 8)")
    parser.add_argument("--frame-stride", type=int, default=1, help="video folders: take every N-th frame")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder call (each also flipped)")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file (default 1024)")
    parser.add_argument("--dtype", choices=lc.DTYPES, default="float16", help="storage dtype (default float16)")
    parser.add_argument("--sample-posterior", action="store_true",
                        help="store a sample of the posterior instead of its mean (the default, as fast-DiT)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes")
    parser.add_argument("--max-bad-fraction", type=float, default=0.01,
                        help="fraction of unreadable images to skip before refusing to finish (default 0.01)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: this rank's GPU, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="discard a cache with other settings at --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--text-encoder", "--text_encoder", dest="text_encoder", default="minilm",
                        help="captioned data: minilm or a local text-encoder folder (each caption encoded once)")
    parser.add_argument("--text-max-length", "--text_max_length", dest="text_max_length", type=int, default=None,
                        help="captioned data: token positions per caption (default: the encoder's)")


def _check_args(args: argparse.Namespace) -> None:
    if args.num_frames < 0 or args.frame_stride < 1:
        raise ConfigError(f"--num-frames must be >= 0 and --frame-stride >= 1, got {args.num_frames}, "
                          f"{args.frame_stride}")
    for name in ("image_size", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    if not 0.0 <= args.max_bad_fraction <= 1.0:
        raise ConfigError(f"--max-bad-fraction must lie in [0, 1], got {args.max_bad_fraction}")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from ditlab.autoencoders import load_autoencoder
    from ditlab.data import build_dataset
    from ditlab.data.extract import extract_latents

    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        # Only barriers travel between ranks, so gloo serves CPU and GPU runs alike; the long
        # timeout lets a fast rank wait at the final barrier for the slowest one.
        torch.distributed.init_process_group("gloo", timeout=timedelta(days=7))
        created = True
    try:
        device = args.device or (
            f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        )
        autoencoder = load_autoencoder(args.autoencoder)
        dataset = build_dataset(args.data, args.image_size, flip=False, channels=autoencoder.image_channels,
                                num_frames=args.num_frames or None, frame_stride=args.frame_stride)
        with lock_folder_on_rank0(args.out, flag="--out", what="latent cache"):  # one job per cache
            extract_latents(
                dataset, autoencoder, args.out, image_size=args.image_size, batch_size=args.batch_size,
                shard_size=args.shard_size, dtype=args.dtype, sample=args.sample_posterior, seed=args.seed,
                num_workers=args.workers, max_bad_fraction=args.max_bad_fraction, overwrite=args.overwrite,
                progress=not args.no_progress, device=device, dataset_spec=_absolute(args.data),
                autoencoder_spec=_absolute(args.autoencoder), text_encoder=args.text_encoder,
                text_max_length=args.text_max_length,
            )
    finally:
        if created:
            torch.distributed.destroy_process_group()
    return 0


def _absolute(spec: str) -> str:
    """A local path made absolute (the trainer reloads the autoencoder from the index, maybe from
    another directory); names such as ``sd-vae-ft-ema``, ``pixel`` or ``mnist`` as given."""
    path = Path(spec).expanduser()
    return str(path.absolute()) if spec != "pixel" and path.exists() else str(spec)

"""``ditlab sample-many RUN_OR_MODEL_DIR --num 50000 --out DIR``: many samples for FID, split over torchrun
ranks and resumable. The work is ``ditlab.sampling.many.sample_many`` (read its docstring).

    torchrun --nproc_per_node 8 $(which ditlab) sample-many runs/xl2 --num 50000 --out samples/xl2
"""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sample-many"
HELP = "N samples with random class labels for FID: PNGs + one ADM .npz, split over torchrun ranks, resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_OR_MODEL_DIR",
                        help="run directory written by `ditlab train`, or a model folder from `ditlab convert`")
    parser.add_argument("--autoencoder", default=None,
                        help="autoencoder for a model folder that names none (diffusers AutoencoderKL folder, "
                             "`ditlab train-vae` folder, or pixel)")
    parser.add_argument("--num", type=int, default=50_000, help="number of samples (default 50000)")
    parser.add_argument("--out", required=True, help="output folder: images/*.png, samples.npz, sample_many.json")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses noise seed SEED + i; labels follow SEED")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the run's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass on each rank")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")


def run(args: argparse.Namespace) -> int:
    from ditlab.sampling.many import sample_many

    result = sample_many(args.run_dir, args.num, args.out, seed=args.seed, cfg=args.cfg, sampler=args.sampler,
                         steps=args.steps, batch_size=args.batch_size, use_ema=not args.no_ema, device=args.device,
                         autoencoder=args.autoencoder)
    if result.npz is not None:
        print(f"made {len(result.generated)} new samples here; {args.num} samples in {Path(args.out) / 'images'}, "
              f"npz: {result.npz}")
    return 0

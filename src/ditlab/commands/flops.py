"""``ditlab flops``: parameters and forward Gflops of DiT models, counted on the real module.

    ditlab flops DiT-XL/2 --image-size 256 --json
    ditlab flops                      # the paper's 12 configurations as a Markdown table
"""
from __future__ import annotations

import argparse
import json

from ditlab.errors import ModelError

NAME = "flops"
HELP = "Parameters and forward Gflops (multiply-adds) of DiT models at an image size."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="NAME",
                        help="registered model names (default: the paper's 12, DiT-S/8 ... DiT-XL/2)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--downsample", type=int, default=8,
                        help="autoencoder downsampling factor (default 8; 1 for pixel space)")
    parser.add_argument("--in-channels", type=int, default=4, help="latent channels (default 4)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: the model's, 1000 for DiT; 0 = unconditional)")
    parser.add_argument("--block", default=None,
                        help="block design: adaLN-Zero (default), adaLN, cross-attention, in-context, "
                             "adaLN-Zero-in-context, mmdit, u-vit")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: one object for one model, else a list of objects")


def run(args: argparse.Namespace) -> int:
    from ditlab.evaluation.flops import PAPER_MODELS, gflops_table, model_gflops

    names = args.models or PAPER_MODELS
    if args.in_channels < 1 or (args.num_classes or 0) < 0:
        raise ModelError("--in-channels must be >= 1 and --num-classes >= 0")
    rows = [
        model_gflops(n, args.image_size, downsample=args.downsample, in_channels=args.in_channels,
                     num_classes=args.num_classes, block=args.block)
        for n in names
    ]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        for r in rows:
            r["downsample"] = args.downsample
        print(gflops_table(rows))
    return 0

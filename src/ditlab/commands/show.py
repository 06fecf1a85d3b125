"""``ditlab show noising|patches IMAGE_OR_DATASET``: figures of the concepts (``ditlab.figures``).

    ditlab show noising mnist --out noising.png --at 0,0.1,0.25,0.5,0.75,1
    ditlab show patches photo.jpg --image-size 256 --autoencoder sd-vae-ft-ema --patch-sizes 2,4,8
"""
from __future__ import annotations

import argparse

NAME = "show"
HELP = "figures of the concepts: the forward process (noising) and patches as tokens (patches)"


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IMAGE_OR_DATASET",
                        help="an image file, an image folder, or a built-in dataset (mnist, digits)")
    parser.add_argument("--index", type=int, default=0, help="which item of a dataset (default 0)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the (centre-cropped) image; default: the dataset's own, 64 for a file")
    parser.add_argument("--out", required=True, help="figure to write (.png, .pdf, .svg)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    noising = sub.add_parser("noising", help="DDPM and rectified flow noising the same image, with the SNR",
                             description="The forward process of DDPM and of rectified flow side by side (pixel "
                                         "space, the same noise in both rows), signal-to-noise ratio under each.")
    _source(noising)
    noising.add_argument("--at", default="0,0.1,0.25,0.5,0.75,0.9,1",
                         help="fractions of the way from data (0) to noise (1): DDPM step f*(T-1), flow time f")
    noising.add_argument("--schedule", default="linear", help="DDPM beta schedule (linear, cosine, scaled_linear)")
    noising.add_argument("--num-timesteps", type=int, default=1000, help="DDPM's T")
    noising.add_argument("--shift", type=float, default=1.0, help="flow: SD3's time shift (1 = none)")
    noising.add_argument("--seed", type=int, default=0, help="seed of the noise")
    patches = sub.add_parser("patches", help="an image, its latent channels and its patch grid with token counts",
                             description="An image, its latent channels (through --autoencoder), and the grid of "
                                         "p x p latent patches the DiT turns into tokens, for each patch size.")
    _source(patches)
    patches.add_argument("--autoencoder", default="pixel",
                         help="pixel (default), a `ditlab train-vae` folder, a run's autoencoder/ folder or a "
                              "diffusers AutoencoderKL folder")
    patches.add_argument("--patch-sizes", default="2,4,8", help="comma-separated patch sizes (default 2,4,8)")


def _numbers(text: str, flag: str, kind=float) -> list:
    from ditlab.errors import UserError

    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty: give at least one value")
    return values


def run(args: argparse.Namespace) -> int:
    from ditlab.errors import UserError
    from ditlab.figures import load_image, noising_figure, patches_figure, save_figure
    from ditlab.sampling import check_writable

    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size must be >= 1, got {args.image_size}")
    out = check_writable(args.out)
    if args.figure == "noising":
        at = _numbers(args.at, "--at")
        if args.num_timesteps < 2:
            raise UserError(f"--num-timesteps must be >= 2, got {args.num_timesteps}")
        image = load_image(args.source, index=args.index, image_size=args.image_size)
        fig = noising_figure(image, at, schedule=args.schedule, num_timesteps=args.num_timesteps, shift=args.shift,
                             seed=args.seed)
    else:
        from ditlab.autoencoders import load_autoencoder

        sizes = _numbers(args.patch_sizes, "--patch-sizes", int)
        if any(p < 1 for p in sizes):
            raise UserError(f"--patch-sizes must be >= 1, got {args.patch_sizes}")
        if args.autoencoder == "pixel":  # the latent is the image itself, in its own channels
            image = load_image(args.source, index=args.index, image_size=args.image_size)
            autoencoder = load_autoencoder("pixel", channels=image.shape[1])
        else:
            autoencoder = load_autoencoder(args.autoencoder).eval()
            image = load_image(args.source, index=args.index, image_size=args.image_size,
                               channels=autoencoder.image_channels)
        fig = patches_figure(image, autoencoder, sizes)
    save_figure(fig, out)
    print(f"wrote {out}")
    return 0

"""``ditlab sample RUN_DIR``: class-conditional samples from a trained run (EMA weights) to PNG / ADM npz."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sample"
HELP = "sample images from a trained run: a grid PNG, optional individual PNGs and an ADM .npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory written by `ditlab train`")
    parser.add_argument("--class", dest="classes", default="all",
                        help="one label, a comma-separated list, or 'all' (default)")
    parser.add_argument("--num", type=int, default=64, help="total number of samples, spread evenly over the classes")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the run's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default="samples.png", help="grid PNG to write")
    parser.add_argument("--out-dir", default=None, help="also write each sample as DIR/000000_class3.png")
    parser.add_argument("--out-npz", default=None, help="also write an ADM .npz (arr_0 N×H×W×C uint8, labels)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", default="auto")


def parse_classes(text: str, num_classes: int) -> list[int]:
    """``'all'``, ``'3'`` or ``'1,2,7'`` -> labels, each checked against the model's classes."""
    from ditlab.errors import UserError

    if num_classes == 0:
        if text not in ("all", ""):
            raise UserError("this model is unconditional: drop --class")
        return [0]
    if text.strip().lower() == "all":
        return list(range(num_classes))
    labels = []
    for part in text.split(","):
        try:
            label = int(part)
        except ValueError:
            raise UserError(f"--class '{part}' is not a number: give labels like 3 or 1,2,7 or all") from None
        if not 0 <= label < num_classes:
            raise UserError(f"--class {label} is outside the model's classes 0..{num_classes - 1}: pick one of those")
        labels.append(label)
    return labels


def run(args: argparse.Namespace) -> int:

    from ditlab.errors import UserError
    from ditlab.training.final_eval import spread_labels
    from ditlab.training.generate import check_sampling, check_writable, generate, save_grid, save_npz, save_png
    from ditlab.training.setup import load_run, pick_device

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.cfg is not None and args.cfg < 0:
        raise UserError(f"--cfg must be >= 0, got {args.cfg}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = check_writable(args.out)
    npz = check_writable(args.out_npz) if args.out_npz else None
    device = pick_device(args.device)
    run_ = load_run(args.run_dir, use_ema=not args.no_ema, device=device)
    classes = parse_classes(args.classes, run_.num_classes)
    labels = spread_labels(classes, args.num)
    cfg = run_.config.cfg_scale if args.cfg is None else args.cfg
    steps = args.steps or run_.config.sample_steps
    sampler = args.sampler or run_.config.sampler or None
    check_sampling(run_.process, sampler, steps)  # fail before the progress bar starts
    from tqdm import tqdm

    with tqdm(total=args.num, desc="sample", unit="img") as bar:
        images = generate(run_.model, run_.process, run_.autoencoder, run_.latent_shape, labels,
                          [args.seed + i for i in range(args.num)], num_classes=run_.num_classes,
                          sampler=sampler, steps=steps, cfg_scale=cfg, batch_size=args.batch_size,
                          device=device, progress=bar.update)
    per_class = args.num // len(classes)
    save_grid(images, out, ncols=per_class if 1 < per_class <= 16 and len(classes) > 1 else None)
    label_array = labels.numpy() if run_.num_classes else None
    if npz is not None:
        save_npz(images, label_array, npz)
    if args.out_dir:
        folder = Path(args.out_dir)
        for i, image in enumerate(images):
            suffix = f"_class{int(labels[i])}" if run_.num_classes else ""
            save_png(image, folder / f"{i:06d}{suffix}.png")
    print(f"wrote {args.num} samples: {out}" + (f", {npz}" if npz else "")
          + (f", {args.out_dir}/" if args.out_dir else ""))
    return 0

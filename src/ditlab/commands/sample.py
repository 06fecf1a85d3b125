"""``ditlab sample RUN_OR_MODEL_DIR``: samples from a trained run (EMA weights) or a converted model folder,
to a labelled grid PNG, individual PNGs and an ADM ``.npz``. All generation goes through
``ditlab.sampling.Pipeline``."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sample"
HELP = "sample images from a trained run or a model folder: a grid PNG, optional individual PNGs and an ADM .npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_OR_MODEL_DIR",
                        help="run directory written by `ditlab train`, or a model folder from `ditlab convert`")
    parser.add_argument("--autoencoder", default=None,
                        help="autoencoder for a model folder that names none: a diffusers AutoencoderKL folder, "
                             "a `ditlab train-vae` folder, or pixel")
    parser.add_argument("--class", dest="classes", default=None,
                        help="class models: one label or name, a comma-separated list, or 'all' (default)")
    parser.add_argument("--prompt", default=None, help="text models: the prompt")
    parser.add_argument("--prompts-file", default=None,
                        help="text models: a file with one prompt per line; --num samples are spread over them")
    parser.add_argument("--negative-prompt", default=None,
                        help="text models: the unconditional branch of guidance uses this prompt")
    parser.add_argument("--text_encoder", "--text-encoder", dest="text_encoder", default=None,
                        help="text encoder for a model folder that names none (minilm or a local folder)")
    parser.add_argument("--num", type=int, default=64, help="total number of samples, spread evenly over the "
                                                             "classes or prompts")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the run's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--height", type=int, default=None,
                        help="sample height in pixels (default: the model's; a multiple of patch x downsampling)")
    parser.add_argument("--width", type=int, default=None, help="sample width in pixels (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default="samples.png", help="grid PNG to write")
    parser.add_argument("--out-dir", default=None, help="also write each sample as DIR/000000_class3.png")
    parser.add_argument("--out-npz", default=None, help="also write an ADM .npz (arr_0 N×H×W×C uint8, labels/prompts)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", default="auto")


def _check_args(args: argparse.Namespace) -> None:
    from ditlab.errors import UserError

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.cfg is not None and args.cfg < 0:
        raise UserError(f"--cfg must be >= 0, got {args.cfg}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prompt is not None and args.prompts_file is not None:
        raise UserError("give --prompt or --prompts-file, not both")
    if args.classes is not None and (args.prompt is not None or args.prompts_file is not None):
        raise UserError("give --class (class models) or --prompt (text models), not both")


def read_prompts(path: str) -> list[str]:
    """Prompts of a file, one per line (blank lines skipped); a one-line UserError if unreadable or empty."""
    from ditlab.errors import UserError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompts file '{path}' not found: check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"prompts file '{path}' is not UTF-8 text: save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read prompts file '{path}' ({err.strerror}): check the path") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file '{path}' holds no prompt: write one prompt per line")
    return prompts


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ditlab.devices import pick_device
    from ditlab.sampling import Pipeline, check_sampling, check_writable, save_grid, save_npz, save_png
    from ditlab.sampling.outputs import row_labels_for

    _check_args(args)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else None
    if args.prompt is not None:
        prompts = [args.prompt]
    out = check_writable(args.out)
    npz = check_writable(args.out_npz) if args.out_npz else None
    device = pick_device(args.device)
    pipe = Pipeline.load(args.run_dir, ema=not args.no_ema, device=device, autoencoder=args.autoencoder,
                         text_encoder=args.text_encoder)
    pipe.check_request(labels=args.classes, prompts=prompts)  # a prompt for a class model, ... : one line
    labels = pipe.condition.parse(args.classes or "all") if pipe.condition.kind == "class" else None
    check_sampling(pipe.process, args.sampler or pipe.defaults.sampler, args.steps or pipe.defaults.steps)
    pipe.latent_shape_at(args.height, args.width)  # a size the model cannot take: one line, before any work
    batches = -(-args.num // args.batch_size)
    with tqdm(total=args.num, desc="sample", unit="img") as bar:
        def progress(step):
            if step.step == step.total:
                bar.update(min(args.batch_size, args.num - step.start))

        got = pipe(labels=labels, prompts=prompts, num=args.num, seed=args.seed, sampler=args.sampler,
                   steps=args.steps, cfg_scale=args.cfg, negative_prompt=args.negative_prompt,
                   batch_size=args.batch_size, callback=progress if batches else None, height=args.height,
                   width=args.width)
    groups = len(labels) if labels is not None else (len(prompts) if prompts else 1)
    per_group = args.num // groups
    ncols = per_group if 1 < per_group <= 16 and groups > 1 else None
    if ncols is None and groups == 1 and len(set(got.descriptions)) == 1 and got.descriptions[0]:
        ncols = min(args.num, 8)
    rows = row_labels_for(got.descriptions, ncols) if ncols else None
    save_grid(got.images, out, ncols=ncols, row_labels=rows)
    if npz is not None:
        save_npz(got.images, npz, labels=got.labels, prompts=got.prompts)
    if args.out_dir:
        folder = Path(args.out_dir)
        for i, image in enumerate(got.images):
            suffix = f"_class{int(got.labels[i])}" if got.labels is not None else ""
            save_png(image, folder / f"{i:06d}{suffix}.png")
    print(f"wrote {args.num} samples: {out}" + (f", {npz}" if npz else "")
          + (f", {args.out_dir}/" if args.out_dir else ""))
    return 0

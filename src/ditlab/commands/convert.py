"""``ditlab convert``: official DiT checkpoints and diffusers transformers to and from ditlab.

    ditlab convert official DiT-XL-2-256x256.pt OUT_DIR       # also {"model", "ema"} training files (takes ema)
    ditlab convert diffusers TRANSFORMER_OR_PIPELINE_DIR OUT_DIR
    ditlab convert to-official MODEL_DIR OUT.pt
    ditlab convert to-diffusers MODEL_DIR OUT_DIR

OUT_DIR of the first two is a ditlab model directory (config.json + model.safetensors + pipeline.json), which
``load_pretrained`` and ``create_model(OUT_DIR)`` read and ``ditlab sample OUT_DIR --autoencoder VAE`` samples:
pipeline.json holds the process and sampler the published weights were trained and sampled with (DiT's:
DDPM, linear schedule, 1000 steps, learned sigma; DDPM sampler, 250 steps, guidance 4. SD3's: rectified
flow with time shift 3, Euler, 28 steps, guidance 7, its text encoders named in the condition).
``diffusers`` takes a ``DiTTransformer2DModel``, ``SD3Transformer2DModel`` or ``PixArtTransformer2DModel``
folder, or a pipeline folder holding one in ``transformer/``. A converted text model samples with
``--text_encoder FOLDER`` (a local encoder of the widths it was trained on) and ``--autoencoder VAE``.
Everything stays local: no hub downloads.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ditlab.errors import CheckpointError

NAME = "convert"
HELP = "Convert official DiT checkpoints and diffusers DiT / SD3 / PixArt transformers to and from ditlab models."
FORMATS = ("official", "diffusers", "to-official", "to-diffusers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS,
                        help="official / diffusers: import into ditlab; to-official / to-diffusers: export")
    parser.add_argument("source", metavar="SRC", help="checkpoint file or model directory to read")
    parser.add_argument("dest", metavar="OUT", help="directory (or .pt/.safetensors file for to-official) to write")
    parser.add_argument("--model", default=None,
                        help="registry name, e.g. DiT-XL/2 (default: found from the tensor shapes)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="override the class count read from the label table (rows - 1)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="latent side (default: read from the checkpoint's position table)")


def _load_diffusers_transformer(src: Path):
    import json

    import diffusers

    from ditlab.interop import DIFFUSERS_CLASSES

    if (src / "transformer" / "config.json").is_file():
        src = src / "transformer"  # a pipeline directory (DiTPipeline, StableDiffusion3Pipeline)
    if not (src / "config.json").is_file():
        raise CheckpointError(
            f"{src} is not a diffusers model directory (no config.json): pass a "
            f"{' or '.join(DIFFUSERS_CLASSES)} folder (or its pipeline's) saved with save_pretrained"
        )
    try:
        kind = json.loads((src / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in DIFFUSERS_CLASSES:
        raise CheckpointError(f"{src} holds a diffusers {kind or 'model of unknown class'}, which ditlab cannot "
                              f"convert: pass a {' or '.join(DIFFUSERS_CLASSES)} folder")
    try:
        return getattr(diffusers, kind).from_pretrained(str(src), local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load a {kind} from {src} ({err}): check the directory") from None


def write_pipeline_spec(model, dest: Path) -> None:
    """``pipeline.json``: how ``Pipeline.from_pretrained`` samples a converted model: a DiT with the paper's
    process, sampler and guidance and a class condition with the checkpoint's label count; an SD3 MMDiT
    with SD3's (``ditlab.sampling.loading.SD3_PIPELINE``), a PixArt DiT with PixArt-α's (``PIXART_PIPELINE``),
    their text conditions taking the network's widths (prompts go through ``--text_encoder``)."""
    import copy

    from ditlab.files import atomic_write_json
    from ditlab.sampling.loading import (
        OFFICIAL_PROCESS,
        OFFICIAL_SAMPLING,
        PIPELINE_FILE,
        PIXART_PIPELINE,
        SD3_PIPELINE,
    )

    cfg = model.config
    text = {"mmdit": SD3_PIPELINE, "pixart": PIXART_PIPELINE}.get(cfg.block)
    if text is not None:
        spec = copy.deepcopy(text)
        spec["condition"].update(context_dim=cfg.context_dim, pooled_dim=cfg.pooled_dim)
        spec["process"]["learn_sigma"] = cfg.learn_sigma if spec["process"]["kind"] == "ddpm" else None
        spec["process"] = {k: v for k, v in spec["process"].items() if v is not None}
        atomic_write_json(dest / PIPELINE_FILE, spec)
        return
    condition = {"kind": "class", "num_classes": cfg.num_classes} if cfg.num_classes else {"kind": "none"}
    atomic_write_json(dest / PIPELINE_FILE, {"process": {**OFFICIAL_PROCESS, "learn_sigma": cfg.learn_sigma},
                                            "sampling": OFFICIAL_SAMPLING, "condition": condition})


def run(args: argparse.Namespace) -> int:
    from ditlab.interop import from_diffusers, from_official, read_checkpoint, to_diffusers, to_official
    from ditlab.models import load_pretrained, save_pretrained

    src, dest = Path(args.source), Path(args.dest)
    overrides = dict(num_classes=args.num_classes, input_size=args.input_size)
    if args.format in ("official", "diffusers"):
        if args.format == "official":
            model = from_official(read_checkpoint(src), args.model, **overrides)
        else:
            model = from_diffusers(_load_diffusers_transformer(src), args.model, **overrides)
        model.config.extra["converted_from"] = f"{args.format}:{src.name}"
        save_pretrained(model, dest)
        write_pipeline_spec(model, dest)
    elif args.format == "to-official":
        sd = to_official(load_pretrained(src))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, str(dest))
        else:
            import torch

            torch.save(sd, dest)
    else:
        model = load_pretrained(src)
        to_diffusers(model).save_pretrained(str(dest))
        cfg = model.config
        if cfg.block in ("mmdit", "pixart"):
            if cfg.timestep_scale != 1:
                print(f"note: diffusers' {cfg.block} transformer takes timestep = ditlab's t x {cfg.timestep_scale:g}",
                      file=sys.stderr)
        elif cfg.timestep_freq_shift != 1 or cfg.timestep_scale != 1:
            print("note: diffusers' config cannot store this model's timestep sinusoid; after "
                  "DiTTransformer2DModel.from_pretrained set time_proj.downscale_freq_shift="
                  f"{model.config.timestep_freq_shift:g} and time_proj.scale={model.config.timestep_scale:g} "
                  "in every block (ditlab.interop.to_diffusers does this in memory)", file=sys.stderr)
    print(f"wrote {dest}")
    return 0

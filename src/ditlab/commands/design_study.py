"""``ditlab design-study``: the text-to-image designs side by side at equal training compute (issue 13, item 4).

    ditlab design-study --designs pixart,mmdit,u-vit,adaLN-Zero-in-context --sizes 2x96x2,4x192x3 \\
        --compute 2e5 --out runs/designs

Every design x size is trained by the ordinary trainer (preset ``mnist-text``: captioned MNIST without the
10 held-out combinations, MiniLM features, the demo's VAE, flow matching, Euler sampling with guidance) for
the same training compute ``--compute`` (forward Gflops x batch x steps x 3, in Gflops), so a bigger or
costlier design takes fewer steps. Each is scored at ``--eval-fractions`` of that compute by the text demo's
metrics (``ditlab.evaluation.mnist_text``: digit, thickness, slant and all three on the held-out and the
seen combinations, ``--per-combination`` samples each; Fréchet distance over ``--fd-num`` samples prompted
with test digits' captions, against the real-data floor).

The autoencoder, the latents and the caption features are built once in OUT and hard-linked into every
run, so the designs differ only in the network (``--share RUN`` takes them from an existing ``mnist-text``
run instead of building them). Results go to ``OUT/designs.json`` after every evaluation, so rerunning
the command skips what is done; then ``OUT/designs.md`` and the figures ``OUT/designs_*.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

NAME = "design-study"
ACCEPTS_OVERRIDES = True  # unknown --key value flags become training config overrides
HELP = "text-to-image designs (PixArt, MMDiT, U-ViT, in-context) at equal training compute, scored on prompts"
DESIGNS = "pixart,mmdit,u-vit,adaLN-Zero-in-context"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--designs", default=DESIGNS, help=f"comma-separated block kinds (default {DESIGNS})")
    parser.add_argument("--sizes", default="2x96x2,4x192x3",
                        help="comma-separated DEPTHxWIDTHxHEADS (default 2x96x2,4x192x3)")
    parser.add_argument("--compute", type=float, required=True,
                        help="training compute of every model in Gflops (forward Gflops x batch x steps x 3)")
    parser.add_argument("--eval-fractions", default="0.5,1",
                        help="fractions of --compute to score at (default 0.5,1)")
    parser.add_argument("--per-combination", type=int, default=20, help="samples per prompted combination")
    parser.add_argument("--fd-num", type=int, default=300, help="samples for the Fréchet distance (0: none)")
    parser.add_argument("--share", metavar="RUN", default=None,
                        help="take the autoencoder, latents and caption features from this mnist-text run")
    parser.add_argument("--out", default="runs/designs", help="study folder (runs, designs.json/.md, figures)")
    parser.add_argument("--preset", default="mnist-text", help="training preset (default mnist-text)")
    parser.add_argument("--config", metavar="YAML", help="YAML file of training config overrides")
    parser.epilog = "Training config fields are flags too: --global_batch_size 32 --lr 1e-3 ..."


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"2x96x2,4x192x3"`` -> [(depth, width, heads), ...]; a one-line UserError for anything else."""
    from ditlab.errors import UserError

    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            depth, width, heads = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise UserError(f"--sizes entry {part!r} is not DEPTHxWIDTHxHEADS: e.g. 4x192x3") from None
        sizes.append((depth, width, heads))
    if not sizes:
        raise UserError("--sizes is empty: give e.g. 2x96x2,4x192x3")
    return sizes


def _link(src: Path, dst: Path) -> None:
    """Hard-link (or copy) ``src`` to ``dst`` unless ``dst`` exists."""
    if dst.exists() or not src.is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _share_files(src: Path, dst: Path) -> None:
    """The autoencoder, latents and caption-feature tables of run (or study) ``src`` into ``dst``."""
    from ditlab.training.setup import AUTOENCODER_DIR, LATENTS_FILE

    for f in (src / AUTOENCODER_DIR).glob("*"):
        _link(f, dst / AUTOENCODER_DIR / f.name)
    _link(src / LATENTS_FILE, dst / LATENTS_FILE)
    for f in (src / "condition").glob("text-*.safetensors"):
        _link(f, dst / "condition" / f.name)


def run(args: argparse.Namespace) -> int:
    from ditlab.config import parse_overrides, resolve_config
    from ditlab.errors import UserError
    from ditlab.models.designs import design_kind, reads_text
    from ditlab.runlock import lock_folder

    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    for d in designs:
        if not reads_text(design_kind(d)):
            raise UserError(f"--designs: {d!r} is not a text design: choose among {DESIGNS}")
    sizes = parse_sizes(args.sizes)
    try:
        fractions = sorted({float(f) for f in args.eval_fractions.split(",") if f.strip()})
    except ValueError:
        raise UserError(f"--eval-fractions {args.eval_fractions!r} is not a list of numbers: e.g. 0.5,1") from None
    if not fractions or not all(0 < f <= 1 for f in fractions) or not args.compute > 0:
        raise UserError("--compute must be > 0 and --eval-fractions in (0, 1]: e.g. --compute 2e5 --eval-fractions "
                        "0.5,1")
    out = Path(args.out)
    fixed = {**parse_overrides(getattr(args, "overrides", None) or []), "eval_every": 0, "eval_num": 0,
             "sample_every": 0}
    base = resolve_config(args.preset, args.config, {**fixed, "run_dir": str(out / "runs" / "base")})
    if base.condition != "text":
        raise UserError(f"preset {args.preset!r} does not train on captions: use --preset mnist-text")
    with lock_folder(out, flag="--out", what="study folder"):
        return _run_study(args, out, base, fixed, designs, sizes, fractions)


def _run_study(args, out: Path, base, fixed: dict, designs: list[str], sizes: list, fractions: list[float]) -> int:
    from ditlab.conditioning import condition_for_dataset
    from ditlab.data import build_dataset
    from ditlab.devices import pick_device
    from ditlab.evaluation.design_study import write_design_study
    from ditlab.training.setup import AUTOENCODER_DIR, build_or_load_autoencoder, cached_latents

    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(base.device)
    if args.share:
        _share_files(Path(args.share), out)
    dataset = build_dataset(base.data, base.image_size, flip=False)
    t0 = time.perf_counter()
    autoencoder = build_or_load_autoencoder(base, dataset, out, device).to(device)
    if base.autoencoder == "auto":
        fixed["autoencoder"] = str((out / AUTOENCODER_DIR).absolute())
    cached_latents(base, dataset, autoencoder, out, device)
    condition = condition_for_dataset(dataset, "text", text_encoder=base.text_encoder,
                                      text_max_length=base.text_max_length, text_standardize=False,
                                      root=out / "condition", device=device, log=print)
    fields = condition.model_fields()
    settings = {"data": base.data, "compute": args.compute, "per_combination": args.per_combination,
                "fd_num": args.fd_num, "preset": args.preset,
                "overrides": {k: str(v) for k, v in sorted(fixed.items())}}
    study = _load(out / "designs.json", settings)
    study.setdefault("shared_seconds", round(time.perf_counter() - t0, 1))
    study.update({"batch": base.global_batch_size, "cfg_scale": base.cfg_scale, "sampler": base.sampler,
                  "sample_steps": base.sample_steps, "lr": base.lr, "fractions": fractions,
                  "text_tokens": base.text_max_length})
    entries = [_entry(study, d, s, base, fields) for s in sizes for d in designs]
    for fraction in fractions:  # all models to the first fraction, then the next: a half study is comparable
        for entry in entries:
            step = max(1, round(fraction * entry["steps"]))
            if any(e["step"] == step for e in entry["evals"]):
                continue
            config = _config(args, fixed, entry, step, out)
            _share_files(out, Path(config.run_dir))
            entry["evals"].append(_train_and_score(config, entry, step, args, device))
            entry["evals"].sort(key=lambda e: e["step"])
            _save(out / "designs.json", study)
    paths = write_design_study(study, out)
    print("table: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _config(args, fixed: dict, entry: dict, step: int, out: Path):
    from ditlab.config import resolve_config

    return resolve_config(args.preset, args.config, {
        **fixed, "block": entry["design"], "depth": entry["depth"], "hidden_size": entry["hidden_size"],
        "num_heads": entry["num_heads"], "steps": step, "ckpt_every": step,
        "run_dir": str(out / "runs" / entry["name"])})


def _entry(study: dict, design: str, size: tuple[int, int, int], base, fields: dict) -> dict:
    """The study's record of one design x size (made once: its Gflops, parameters and step budget)."""
    from ditlab.evaluation.flops import count_gflops
    from ditlab.evaluation.scaling_plots import training_compute
    from ditlab.models import model_from_config

    depth, width, heads = size
    name = f"{design}-{depth}x{width}"
    for e in study["models"]:
        if e["name"] == name:
            return e
    cfg = _model_config(base, design, depth, width, heads, fields)
    meta = model_from_config(cfg, device="meta")
    gflops = count_gflops(meta, text_tokens=base.text_max_length)
    steps = max(1, round(study["compute"] / training_compute(gflops, base.global_batch_size, 1)))
    entry = {"name": name, "design": design, "depth": depth, "hidden_size": width, "num_heads": heads,
             "gflops": gflops, "params": sum(p.numel() for p in meta.parameters()), "steps": steps,
             "batch": base.global_batch_size, "evals": [], "train_seconds": 0.0, "cpu_seconds": 0.0}
    study["models"].append(entry)
    return entry


def _model_config(base, design: str, depth: int, width: int, heads: int, fields: dict):
    """The DiTConfig a run of ``base`` with this design and size builds (for counting, on the meta device)."""
    from ditlab.models import DiTConfig
    from ditlab.models.config import config_for

    side = base.image_size // base.vae_downsample
    cfg = config_for(base.model, block=design, depth=depth, hidden_size=width, num_heads=heads,
                     input_size=side, in_channels=base.vae_latent_channels, learn_sigma=False,
                     timestep_scale=1000.0, **{k: v for k, v in fields.items() if k != "learned_null"})
    return DiTConfig.from_dict(cfg.to_dict())


def _train_and_score(config, entry: dict, step: int, args, device) -> dict:
    from ditlab.commands.scale import train_to
    from ditlab.evaluation.mnist_text import score_text_demo
    from ditlab.evaluation.scaling_plots import training_compute
    from ditlab.sampling import Pipeline

    t0, c0 = time.perf_counter(), time.process_time()
    train_to(config)
    entry["train_seconds"] = round(entry["train_seconds"] + time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    pipe = Pipeline.from_run(config.run_dir, device=device)

    def generate(prompts: list[str]):
        return pipe(prompts=prompts, num=len(prompts), seed=0, batch_size=250).images

    scores, _ = score_text_demo(generate, per_combination=args.per_combination, fd_num=args.fd_num, seed=0)
    entry["cpu_seconds"] = round(entry["cpu_seconds"] + time.process_time() - c0, 1)
    record = {"step": step, "train_compute": training_compute(entry["gflops"], entry["batch"], step),
              "eval_seconds": round(time.perf_counter() - t1, 1), "train_seconds": entry["train_seconds"]}
    for name in ("held_out", "seen"):
        record[name] = {k: scores[name][k] for k in ("digit_accuracy", "thickness_right", "slant_right", "all_right")}
    if "test_captions" in scores:
        tc = scores["test_captions"]
        record["frechet_distance"], record["frechet_floor"] = tc["frechet_distance"], tc["frechet_floor"]
        record["frechet_ratio"] = tc["frechet_ratio"]
    held = record["held_out"]
    print(f"{entry['name']} step {step}: held out digit {held['digit_accuracy']:.1%}, thickness "
          f"{held['thickness_right']:.1%}, slant {held['slant_right']:.1%}, all {held['all_right']:.1%}; "
          f"FD ratio {record.get('frechet_ratio', float('nan')):.2f}", flush=True)
    return record


def _load(path: Path, settings: dict) -> dict:
    from ditlab.errors import UserError

    if path.is_file():
        study = json.loads(path.read_text())
        for key, value in settings.items():
            if study.get(key) != value:
                raise UserError(f"'{path.parent}' holds a study with {key}={study.get(key)!r}, not {value!r}: "
                                "pass another --out, or delete that folder")
        return study
    return {**settings, "models": []}


def _save(path: Path, study: dict) -> None:
    from ditlab.files import atomic_write_json

    atomic_write_json(path, study)

"""``ditlab scale DATA --models DiT-S/8,DiT-S/4,DiT-S/2 --budget STEPS``: the paper's scaling study.

Each model is trained by the ordinary trainer in ``OUT/runs/<model>`` up to each of ``--eval-steps`` in
turn (resume is exact, so this is one uninterrupted run), and its EMA model is scored after each: FID
against the training set's Inception statistics (``--metric fid``) or, for MNIST, the MNIST classifier's
Fréchet distance and class accuracy (``--metric mnist``, the default for mnist). The autoencoder
(``--autoencoder auto``) is trained once in ``OUT/autoencoder`` and built-in data are encoded once into
``OUT/latents.safetensors``, shared by every model. Results go to ``OUT/scaling.json`` after every
evaluation, so rerunning the command skips what is done; at the end ``OUT/scaling.md`` (tables, the
correlation of log-Gflops with each metric) and three figures: metric vs Gflops (Peebles & Xie 2023,
Figs. 2 / 8), vs training steps (Fig. 11), vs training compute (Fig. 9). Any training config field is a
flag (``--image_size 32 --lr 1e-3``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME = "scale"
ACCEPTS_OVERRIDES = True  # unknown --key value flags become training config overrides
HELP = "scaling study: train several DiT configs, score them at several steps, table + FID-vs-Gflops plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="mnist | digits | an image folder (what `ditlab train --data` takes)")
    parser.add_argument("--models", required=True,
                        help="comma-separated registered names, e.g. DiT-S/8,DiT-S/4,DiT-S/2")
    parser.add_argument("--budget", type=int, required=True, help="training steps of every model")
    parser.add_argument("--eval-steps", default=None,
                        help="comma-separated steps to score at (default: budget/4, budget/2, budget)")
    parser.add_argument("--metric", default="auto", choices=("auto", "fid", "mnist"),
                        help="fid (Inception, vs training-set statistics) or mnist (MNIST-classifier Fréchet "
                             "distance); auto: mnist for --data mnist, else fid")
    parser.add_argument("--eval-num", type=int, default=1000, help="samples per evaluation (default 1000)")
    parser.add_argument("--shrink", type=float, default=1.0,
                        help="divide every model's depth and heads by this (head width kept), e.g. 3: "
                             "S (12, 384, 6) -> (4, 128, 2); for studies a CPU can afford")
    parser.add_argument("--out", default="runs/scale", help="study folder (runs, scaling.json/.md, plots)")
    parser.add_argument("--preset", default="mnist", help="training preset the overrides apply to (default mnist)")
    parser.add_argument("--config", metavar="YAML", help="YAML file of training config overrides")
    parser.add_argument("--guided-cfg", type=float, default=None, metavar="SCALE",
                        help="also score each model's last checkpoint with classifier-free guidance at SCALE "
                             "(stored apart as 'guided'; the figures stay unguided, as the paper's)")
    parser.epilog = "Training config fields are flags too: --image_size 8 --autoencoder pixel --lr 1e-3 ..."


def parse_steps(text: str | None, budget: int) -> list[int]:
    """Sorted evaluation steps, each in [1, budget]; the budget itself is always one of them."""
    from ditlab.errors import UserError

    if text is None:
        return sorted({max(1, budget // 4), max(1, budget // 2), budget})
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--eval-steps '{text}' is not a comma-separated list of step numbers: "
                        f"e.g. 100,200,400") from None
    bad = [s for s in steps if not 1 <= s <= budget]
    if bad:
        raise UserError(f"--eval-steps {bad} outside [1, --budget {budget}]: choose steps up to the budget")
    return sorted(set(steps) | {budget})


def _slug(name: str) -> str:
    return name.replace("/", "-")


def run(args: argparse.Namespace) -> int:
    from ditlab.config import parse_overrides, resolve_config
    from ditlab.errors import UserError
    from ditlab.evaluation.scaling import shrink_config
    from ditlab.models.config import REGISTRY

    if args.budget < 1:
        raise UserError(f"--budget must be >= 1, got {args.budget}")
    if args.eval_num < 2:
        raise UserError(f"--eval-num must be >= 2 (Fréchet statistics need two samples), got {args.eval_num}")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if not names or unknown:
        raise UserError(f"unknown model(s) {unknown or args.models!r} in --models: use registered names such as "
                        f"DiT-S/8,DiT-S/4,DiT-S/2,DiT-B/4 (see `ditlab flops`)")
    if len(set(names)) != len(names):
        raise UserError(f"--models lists a model twice ({args.models}): list each once")
    eval_steps = parse_steps(args.eval_steps, args.budget)
    metric = args.metric if args.metric != "auto" else ("mnist" if args.data == "mnist" else "fid")
    if metric == "mnist" and args.data != "mnist":
        raise UserError(f"--metric mnist needs mnist data, not '{args.data}': use --metric fid")
    sizes = {n: shrink_config(n, args.shrink) for n in names}
    out = Path(args.out)
    fixed = {**parse_overrides(getattr(args, "overrides", None) or []), "data": args.data, "eval_every": 0,
             "eval_num": 0, "sample_every": 0}
    base = resolve_config(args.preset, args.config, {**fixed, "run_dir": str(out / "runs" / "base")})
    if base.latents:
        raise UserError("ditlab scale trains from --data (it builds each model's data once): drop --latents")
    guided = args.guided_cfg
    if guided is not None and (not guided > 0 or guided == base.cfg_scale):
        raise UserError(f"--guided-cfg must be > 0 and differ from the study's cfg_scale {base.cfg_scale}, got "
                        f"{guided}: e.g. --guided-cfg 1.5")

    from ditlab.data import build_dataset
    from ditlab.devices import pick_device
    from ditlab.runlock import lock_folder

    device = pick_device(base.device)
    dataset = build_dataset(base.data, base.image_size, flip=False)
    # One study per folder; each model's run takes its own lock (OUT/runs/<model>) inside train().
    with lock_folder(out, flag="--out", what="study folder"):
        return _run_study(args, out, base, fixed, dataset, device, names, sizes, eval_steps, metric)


def _run_study(args, out: Path, base, fixed: dict, dataset, device, names: list[str], sizes: dict,
               eval_steps: list[int], metric: str) -> int:
    """The study itself (the caller holds the study folder's lock)."""
    from ditlab.config import resolve_config

    guided = args.guided_cfg
    from ditlab.evaluation.scaling import write_study
    from ditlab.training.setup import AUTOENCODER_DIR, build_or_load_autoencoder, cached_latents

    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    # One autoencoder and one latent encoding for every model, so that they differ only in the DiT.
    autoencoder = build_or_load_autoencoder(base, dataset, out, device)
    autoencoder.to(device)
    if base.autoencoder == "auto":
        fixed["autoencoder"] = str(out / AUTOENCODER_DIR)
    if hasattr(dataset, "tensors"):  # built-in data: encoded once into OUT/latents.safetensors, linked per run
        cached_latents(base, dataset, autoencoder, out, device)

    settings = {"data": args.data, "metric": "mnist_fd" if metric == "mnist" else "fid", "eval_num": args.eval_num,
                "budget": args.budget, "shrink": args.shrink, "preset": args.preset,
                "overrides": {k: str(v) for k, v in sorted(fixed.items())}}
    study = _load_study(out / "scaling.json", settings)
    study.update({"cfg_scale": base.cfg_scale, "sampler": base.sampler, "sample_steps": base.sample_steps,
                  "global_batch_size": base.global_batch_size, "lr": base.lr, "eval_steps": eval_steps})
    scorer = _make_scorer(metric, base, dataset, device)
    if metric == "mnist" and "autoencoder" not in study and base.autoencoder != "pixel":
        recon = scorer.score_reconstructions(autoencoder, args.eval_num, device=device)
        study["autoencoder"] = {"spec": fixed.get("autoencoder", base.autoencoder), "reconstructions": recon,
                                "seconds": round(time.perf_counter() - t0, 1),
                                "cpu_seconds": round(time.process_time() - c0, 1)}
        print(f"autoencoder: reconstructions of {args.eval_num} training digits: "
              + ", ".join(f"{k} {v:.4g}" for k, v in recon.items()), flush=True)
        _save_study(out / "scaling.json", study)
    # Checkpoint by checkpoint across the models (all to the first step, then all to the next, ...), so a
    # study stopped half-way holds comparable points for every model, and resumes where it stopped.
    entries = {name: _model_entry(study, name, sizes[name], base.global_batch_size) for name in names}
    for step in eval_steps:
        for name in names:
            entry = entries[name]
            if any(e["step"] == step for e in entry["evals"]):
                continue
            config = resolve_config(args.preset, args.config, {
                **fixed, "model": name, **sizes[name], "steps": step, "run_dir": str(out / "runs" / _slug(name))})
            _share_latents(out, Path(config.run_dir))
            entry["evals"].append(_train_and_score(config, step, scorer, args.eval_num, device, entry))
            entry["evals"].sort(key=lambda e: e["step"])
            if "mnist_fd_floor" in entry["evals"][-1]:  # real digits at this size: the best a sample can do
                study["floor"] = entry["evals"][-1]["mnist_fd_floor"]
            _save_study(out / "scaling.json", study)
    for name in names if guided is not None else []:
        entry = entries[name]
        if entry.get("guided", {}).get("cfg_scale") != guided:
            config = resolve_config(args.preset, args.config, {
                **fixed, "model": name, **sizes[name], "steps": args.budget, "cfg_scale": guided,
                "run_dir": str(out / "runs" / _slug(name))})
            entry["guided"] = _score_guided(config, scorer, args.eval_num, device, entry)
            _save_study(out / "scaling.json", study)
    study["models"].sort(key=lambda e: names.index(e["name"]) if e["name"] in names else len(names))
    paths = write_study(study, out)
    print(f"table: {paths['markdown']}; figures: {paths['gflops_plot']}, {paths['steps_plot']}, "
          f"{paths['compute_plot']}")
    return 0


def _make_scorer(metric: str, config, dataset, device):
    from ditlab.training.periodic_eval import build_scorers, check_metrics_available

    check_metrics_available([metric], config)
    return build_scorers(config, dataset, device, [metric])[0]


def _load_study(path: Path, settings: dict) -> dict:
    """The study so far (to resume), or a new one; a study of other settings is refused."""
    from ditlab.errors import UserError

    if path.is_file():
        study = json.loads(path.read_text())
        for key, value in settings.items():
            if study.get(key) != value:
                raise UserError(f"'{path.parent}' holds a study with {key}={study.get(key)!r}, not {value!r}: "
                                f"pass another --out, or delete that folder")
        return study
    return {**settings, "models": []}


def _save_study(path: Path, study: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(study, indent=2) + "\n")
    tmp.replace(path)


def _model_entry(study: dict, name: str, size: dict, batch: int) -> dict:
    for entry in study["models"]:
        if entry["name"] == name:
            return entry
    entry = {"name": name, "label": name, **size, "batch": batch, "evals": [], "train_seconds": 0.0,
             "cpu_seconds": 0.0}
    study["models"].append(entry)
    return entry


def _share_latents(out: Path, run_dir: Path) -> None:
    """Hard-link (or copy) the study's latent encoding into a model's run directory, where the trainer looks."""
    import os
    import shutil

    from ditlab.training.setup import LATENTS_FILE

    src, dst = out / LATENTS_FILE, run_dir / LATENTS_FILE
    if not src.is_file() or dst.exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _size_fields(entry: dict, model_config) -> None:
    """Gflops (counted on a meta-device copy), parameters and tokens of a model, once."""
    if "gflops" in entry:
        return
    from ditlab.evaluation.flops import count_gflops
    from ditlab.models import model_from_config

    meta = model_from_config(model_config, device="meta")
    entry["gflops"] = count_gflops(meta)
    entry["params"] = sum(p.numel() for p in meta.parameters())
    h, w = model_config.input_size
    entry["tokens"] = (h // model_config.patch_size) * (w // model_config.patch_size)


def _train_and_score(config, step: int, scorer, eval_num: int, device, entry: dict) -> dict:
    """Train ``config`` up to ``step`` (resuming), then score ``eval_num`` EMA samples; fills the model's size."""
    from ditlab.evaluation.scaling_plots import training_compute

    t0, c0 = time.perf_counter(), time.process_time()
    train_to(config)
    entry["train_seconds"] = round(entry["train_seconds"] + time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    images, labels, model_config = sample_run(config, eval_num, device, step=step)
    _size_fields(entry, model_config)
    values = scorer.score(images, labels)
    entry["cpu_seconds"] = round(entry.get("cpu_seconds", 0.0) + time.process_time() - c0, 1)
    record = {"step": step, **values, "train_compute": training_compute(entry["gflops"], entry["batch"], step),
              "eval_seconds": round(time.perf_counter() - t1, 1), "train_seconds": entry["train_seconds"]}
    print(f"{entry['label']} step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()), flush=True)
    return record


def _score_guided(config, scorer, eval_num: int, device, entry: dict) -> dict:
    """The last checkpoint scored with guidance (``config.cfg_scale``): reported apart, never plotted."""
    t0, c0 = time.perf_counter(), time.process_time()
    images, labels, _ = sample_run(config, eval_num, device, step=config.steps)
    values = scorer.score(images, labels)
    entry["cpu_seconds"] = round(entry.get("cpu_seconds", 0.0) + time.process_time() - c0, 1)
    print(f"{entry['label']} step {config.steps}, cfg {config.cfg_scale}: "
          + ", ".join(f"{k} {v:.4g}" for k, v in values.items()), flush=True)
    return {"cfg_scale": config.cfg_scale, "step": config.steps, **values,
            "eval_seconds": round(time.perf_counter() - t0, 1)}


# ---- The only two places where this command uses the training and sampling internals.
def train_to(config) -> None:
    """Train (or resume) the run ``config.run_dir`` up to exactly ``config.steps`` with the ordinary trainer."""
    from ditlab.errors import ProcessError
    from ditlab.training.loop import train

    result = train(config)
    if result.stopped_early:
        raise ProcessError(f"training of {config.model} stopped at step {result.step}: rerun the same command")
    if result.step != config.steps:
        raise ProcessError(f"'{config.run_dir}' is at step {result.step}, not {config.steps}: it was trained further "
                           f"by another command; delete it and rerun")


def sample_run(config, num: int, device, *, step: int):
    """Samples 0..num-1 of the run's EMA model with ``config``'s sampler, steps and guidance: sample i has
    noise seed i and label ``random_labels(config.seed, [i])``. Returns uint8 images (N, H, W, C), labels
    (N,) and the model's DiTConfig; refuses a run that is not at ``step``."""
    from ditlab.errors import ProcessError
    from ditlab.sampling import Pipeline
    from ditlab.training.periodic_eval import eval_samples

    pipe = Pipeline.from_run(config.run_dir, device=device)
    if pipe.info["step"] != step:
        raise ProcessError(f"'{config.run_dir}' is at step {pipe.info['step']}, not {step}: it was trained further "
                           f"by another command; delete it and rerun")
    images, labels = eval_samples(pipe, config, range(num))
    return images, labels, pipe.model.config

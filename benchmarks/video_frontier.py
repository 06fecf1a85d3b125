"""The video demo's frontier: every figure of the moving-digit bar against training steps, for several recipes.

Trains each recipe as ``ditlab train --preset moving-mnist FLAGS`` (in parallel, one process each, all sharing one
autoencoder), keeps every checkpoint and, while it trains, samples ``--eval-num`` clips (evenly over the 80 classes,
the run's sampler and guidance) from each new checkpoint's EMA weights and scores them as the demo does
(``ditlab.training.video_eval.moving_digit_scores``). Steps, not seconds, are the currency: run it on a GPU for
speed and convert steps to 2-core CPU minutes with ``cpu-rate`` (which times each recipe's training step and
sampling on this machine's CPU)::

    python benchmarks/video_frontier.py train --out frontier --autoencoder runs/moving-mnist/autoencoder \\
        --steps 3000 --ckpt-every 250 --recipe "p4=" --recipe "p2f=--patch_size 2 --class_factors 10,8" \\
        --parallel 4 --device cuda
    python benchmarks/video_frontier.py cpu-rate --recipe "p4=" --recipe "p2f=--patch_size 2 --class_factors 10,8"

``--cfg``, ``--sampler`` and ``--sample-steps`` score with other settings than the run's (e.g. the demo's guidance
on recipes trained with another). ``train`` writes ``OUT/frontier.jsonl`` (one line per recipe and checkpoint) and
prints a table;
``cpu-rate`` prints training steps per second and the seconds to sample the demo's 800 clips, per recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FIGURES = ("frame_accuracy", "digit_consistency", "direction_accuracy", "smoothness_ratio", "frechet_ratio")


def parse_recipes(items: list[str]) -> dict[str, list[str]]:
    recipes = {}
    for item in items:
        name, _, flags = item.partition("=")
        recipes[name.strip()] = shlex.split(flags)
    return recipes


def train_one(name: str, flags: list[str], args) -> str:
    """Train one recipe while a second process scores each checkpoint as soon as it is written."""
    run = Path(args.out) / "runs" / name
    log = Path(args.out) / f"{name}.log"
    cmd = [sys.executable, "-m", "ditlab.cli", "train", "--preset", "moving-mnist", "--run_dir", str(run),
           "--device", args.device, "--steps", str(args.steps), "--ckpt_every", str(args.ckpt_every),
           "--keep_last", "1000", "--eval_num", "0", "--log_every", "250", "--no-tensorboard"]
    if args.autoencoder:
        cmd += ["--autoencoder", args.autoencoder]
    done = run.with_suffix(".done")
    done.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f, open(log.with_suffix(".score.log"), "w") as g:
        scorer = subprocess.Popen([sys.executable, __file__, "score", str(run), "--name", name, "--num",
                                   str(args.eval_num), "--device", args.device, "--follow", str(done),
                                   "--jsonl", str(Path(args.out) / "frontier.jsonl"), *sampling_flags(args)],
                                  stdout=g, stderr=subprocess.STDOUT)
        rc = subprocess.call(cmd + flags, stdout=f, stderr=subprocess.STDOUT)
        train_s = time.perf_counter() - t0
        done.write_text(str(rc))
        scored = scorer.wait()
    return f"{name}: train exit {rc} after {train_s:.0f}s, scoring exit {scored} {time.perf_counter() - t0:.0f}s in all"


def sampling_flags(args) -> list[str]:
    """The ``score`` flags that override the run's sampler, steps and guidance (those given)."""
    flags = []
    for flag, value in (("--cfg", args.cfg), ("--sampler", args.sampler), ("--sample-steps", args.sample_steps)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def score(args) -> None:
    """Score every checkpoint of one run (EMA weights), appending a line per checkpoint to ``--jsonl``; the run's
    sampler, steps and guidance unless ``--sampler``, ``--sample-steps`` or ``--cfg`` override them."""
    import torch

    from ditlab.config import load_config
    from ditlab.sampling import Pipeline
    from ditlab.training.checkpoint import load_weights, read_meta
    from ditlab.training.video_eval import moving_digit_scores

    run = Path(args.run)
    scored: set[str] = set()
    pipe = config = None
    while True:
        finished = args.follow is None or Path(args.follow).exists()  # read before listing: no checkpoint is missed
        ckpts = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "ema.safetensors").is_file()
                       and p.name not in scored) if (run / "checkpoints").is_dir() else []
        if not ckpts:
            if finished:
                return
            time.sleep(2)
            continue
        if pipe is None:
            config = load_config(run / "config.json")
            pipe = Pipeline.from_run(run, device=args.device)
        for ckpt in ckpts:
            scored.add(ckpt.name)
            pipe.model.load_state_dict(load_weights(ckpt / "ema.safetensors"))
            t0 = time.perf_counter()
            with torch.no_grad():
                got = pipe(num=args.num, seed=0, batch_size=400, sampler=args.sampler, steps=args.sample_steps,
                           cfg_scale=args.cfg)
            sample_s = time.perf_counter() - t0
            scores = moving_digit_scores(pipe, got.images, got.labels, config)
            line = {"recipe": args.name, "step": int(read_meta(ckpt)["step"]), "num": args.num,
                    "sampler": got.settings["sampler"], "sample_steps": got.settings["steps"],
                    "cfg_scale": got.settings["cfg_scale"], "sample_seconds": round(sample_s, 2),
                    **{k: round(float(scores[k]), 4) for k in FIGURES}}
            print(json.dumps(line), flush=True)
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(line) + "\n")


def table(jsonl: Path) -> str:
    rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()] if jsonl.is_file() else []
    rows.sort(key=lambda r: (r["recipe"], r.get("cfg_scale", 0), r["step"]))
    out = ["recipe         cfg    step  frame  consist  direct  smooth  frechet"]
    for r in rows:
        cfg = f"{r['cfg_scale']:g}" if "cfg_scale" in r else "run"
        out.append(f"{r['recipe']:<12} {cfg:>5} {r['step']:>6}  {r['frame_accuracy']:.3f}  "
                   f"{r['digit_consistency']:.3f}    {r['direction_accuracy']:.3f}   {r['smoothness_ratio']:6.1f}  "
                   f"{r['frechet_ratio']:6.2f}")
    return "\n".join(out)


def train(args) -> None:
    from ditlab.runlock import lock_folder

    recipes = parse_recipes(args.recipe)
    # one sweep per folder (its scorers append to OUT/frontier.jsonl); each recipe's run also locks its own folder
    with lock_folder(args.out, flag="--out", what="frontier folder"), ThreadPoolExecutor(args.parallel) as pool:
        Path(args.out, "runs").mkdir(parents=True, exist_ok=True)
        for message in pool.map(lambda kv: train_one(kv[0], kv[1], args), recipes.items()):
            print(message, flush=True)
    print(table(Path(args.out) / "frontier.jsonl"))


def cpu_rate(args) -> None:
    """Training steps per second and the seconds to sample 800 clips (10 steps, guidance), per recipe, on the CPU."""
    import torch

    from ditlab.conditioning import ClassCondition
    from ditlab.config import TrainConfig, coerce, parse_overrides
    from ditlab.diffusion.flow import FlowProcess
    from ditlab.presets import PRESETS
    from ditlab.training.setup import build_model

    torch.set_num_threads(args.threads)
    for name, flags in parse_recipes(args.recipe).items():
        fields = dict(PRESETS["moving-mnist"])
        fields.update({key: coerce(key, value) for key, value in parse_overrides(flags).items()})
        config = TrainConfig(**fields)
        down = config.vae_downsample
        shape = (config.vae_latent_channels, config.num_frames, config.image_size // down, config.image_size // down)
        torch.manual_seed(0)
        model = build_model(config, shape, ClassCondition(80), FlowProcess())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b = config.global_batch_size
        x, t, y = torch.randn(b, *shape), torch.rand(b), torch.randint(0, 80, (b,))
        times = []
        for _ in range(args.repeats + 2):
            t0 = time.perf_counter()
            loss = (model(x, t, y=y) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step_s = sorted(times[2:])[len(times[2:]) // 2]
        with torch.no_grad():
            xs, ts, ys = torch.randn(200, *shape), torch.rand(200), torch.randint(0, 81, (200,))
            t0 = time.perf_counter()
            model(xs, ts, y=ys)
            fwd_200 = time.perf_counter() - t0
        guided = 2 if config.cfg_scale != 1.0 else 1
        sample_800 = fwd_200 * 4 * config.sample_steps * guided
        print(f"{name:<12} {1 / step_s:6.2f} steps/s   sampling 800 clips ~{sample_800:5.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train")
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", action="append", required=True, help="NAME=FLAGS for ditlab train (repeatable)")
    p.add_argument("--autoencoder", default="", help="one autoencoder folder for every recipe (default: each trains)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--eval-num", type=int, default=800)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--device", default="cpu")
    s = sub.add_parser("score")
    for q in (p, s):
        q.add_argument("--cfg", type=float, default=None, help="guidance scale of the scoring (default: the run's)")
        q.add_argument("--sampler", default=None, help="sampler of the scoring (default: the run's)")
        q.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the run's)")
    s.add_argument("run")
    s.add_argument("--name", required=True)
    s.add_argument("--num", type=int, default=800)
    s.add_argument("--device", default="cpu")
    s.add_argument("--jsonl", required=True)
    s.add_argument("--follow", default=None, help="keep scoring new checkpoints until this file exists")
    r = sub.add_parser("cpu-rate")
    r.add_argument("--recipe", action="append", required=True)
    r.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    r.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    from ditlab.errors import UserError

    try:
        {"train": train, "score": score, "cpu-rate": cpu_rate}[args.cmd](args)
    except UserError as e:  # e.g. the --out folder in use by another sweep: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

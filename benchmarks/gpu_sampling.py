"""Guided sampling of DiT-XL/2 on a GPU, end to end: ditlab against diffusers' ``DiTPipeline``.

Both sides turn class labels into 256x256 images in host memory: noise, ``steps`` guided network
evaluations (scale 4, the conditional and null halves in one batch of 2 x batch), the sampler's update,
then the SD-VAE decode. Same weights (``ditlab.interop.to_diffusers``), same number of steps, bf16
weights on both sides; the VAE is a diffusers ``AutoencoderKL`` with the SD-VAE architecture and random
weights (speed does not depend on them; built from its config, nothing downloaded), one copy per side.

- diffusers: ``DiTPipeline(transformer, vae, scheduler)(labels, num_inference_steps=steps,
  output_type="np")`` with DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler (dpmsolver++, 2nd
  order), as shipped (eager, torch's default attention kernel order).
- ditlab: ``process.sample`` (ddpm / ddim / dpmpp_2m) around the network evaluation replayed as a CUDA
  graph (``ditlab.models.cuda_graph.GraphedForward``, what ``Pipeline.cuda_graphs`` uses), the fused GPU
  kernels of ``ditlab.models.fused`` (small compiled regions; bias + GELU in the GEMM epilogue), cuDNN
  attention first; VAE decode in bf16, channels-last. The three are ditlab's opt-in GPU paths (off by
  default until measured); this script turns them on for ditlab's side, ``--no-graphs``, ``--no-fused``,
  ``--no-cudnn`` leave one off.

A full 250-step run of 256 images takes tens of seconds per side, so each (sampler, batch) is timed at two
step counts (``--steps-lo``, ``--steps-hi``), alternating the two sides; their difference gives the time
per step, the rest is the fixed cost (noise, decode, copy to the host). Images/s at 50 and 250 steps are
computed from those two numbers (``computed``), and one configuration is also run at 50 steps outright
(``measured``) to check the computation.

    python benchmarks/gpu_sampling.py --json sampling.json
    python benchmarks/gpu_sampling.py --device cpu --model DiT-Test/2 --batches 2 --steps-lo 1 --steps-hi 2 \\
        --check-steps 2 --vae tiny --dtype fp32                               # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

CFG = 4.0
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)
TINY_VAE = dict(SD_VAE, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1, sample_size=32)
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def diffusers_scheduler(sampler: str):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)


def build(args, device: torch.device, dtype: torch.dtype):
    """(ditlab model, diffusers transformer, VAE for ditlab, VAE for diffusers), same weights each pair."""
    from diffusers import AutoencoderKL

    from ditlab.interop import to_diffusers
    from ditlab.models import create_model

    torch.manual_seed(0)
    side = args.image_size // 8
    model = create_model(args.model, input_size=side, num_classes=1000, learn_sigma=True, device=device).eval()
    with torch.no_grad():  # random weights: a fresh adaLN-Zero model computes zeros, which runs unrealistically fast
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.02)
    theirs = to_diffusers(model).to(device=device, dtype=dtype).eval()
    model = model.to(dtype).requires_grad_(False)
    cfg = SD_VAE if args.vae == "sd" else TINY_VAE
    vae = AutoencoderKL(**cfg).to(device=device, dtype=dtype).eval()
    vae_theirs = AutoencoderKL(**cfg).to(device=device, dtype=dtype).eval()
    vae_theirs.load_state_dict(vae.state_dict())
    return model, theirs, vae.to(memory_format=torch.channels_last), vae_theirs


def ditlab_runner(model, vae, args, device: torch.device, dtype: torch.dtype):
    """``run(labels, sampler, steps) -> uint8 images (N, H, W, 3)`` on ditlab's path."""
    from ditlab.diffusion import create_process
    from ditlab.models.cuda_graph import GraphedForward

    process = create_process("ddpm", learn_sigma=True)
    def eager(x, t, y):
        return model(x.to(dtype), t, y).float()

    graphed = GraphedForward(eager)
    side = args.image_size // 8

    def model_fn(x, t, y):
        return graphed(x=x, t=t, y=y) if args.graphs else eager(x, t, y)

    def run(labels: list[int], sampler: str, steps: int) -> np.ndarray:
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.inference_mode():
            y = torch.tensor(labels, device=device)
            noise = torch.randn(len(labels), 4, side, side, device=device, generator=gen)
            latents = process.sample(model_fn, noise, sampler=sampler, steps=steps, model_kwargs={"y": y},
                                     cfg_scale=CFG, uncond_model_kwargs={"y": torch.full_like(y, 1000)})
            z = (latents / vae.config.scaling_factor).to(dtype).contiguous(memory_format=torch.channels_last)
            images = vae.decode(z).sample  # (N, 3, H, W) in [-1, 1]
            images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return images.permute(0, 2, 3, 1).cpu().numpy()

    return run, graphed


def diffusers_runner(transformer, vae, device: torch.device):
    from diffusers import DiTPipeline

    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers_scheduler("ddim"))
    pipe.set_progress_bar_config(disable=True)

    def run(labels: list[int], sampler: str, steps: int) -> np.ndarray:
        pipe.scheduler = diffusers_scheduler(sampler)
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.inference_mode():
            return pipe(class_labels=labels, guidance_scale=CFG, generator=gen, num_inference_steps=steps,
                        output_type="np").images

    return run


def timed(sync, fn, *args) -> float:
    """Seconds of ``fn(*args)``, the device drained before and after."""
    sync()
    t0 = time.perf_counter()
    fn(*args)
    sync()
    return time.perf_counter() - t0


def attention(device: torch.device, ours: bool, args=None) -> None:
    """ditlab's side with its opt-in fused kernels and cuDNN attention first (unless ``--no-fused`` /
    ``--no-cudnn``); diffusers with torch's default attention order, as shipped, and ditlab's default."""
    from ditlab.models import fused

    fused.set_enabled(ours and (args is None or args.fused))
    if device.type == "cuda":
        fused.prefer_cudnn_attention(ours and (args is None or args.cudnn))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DiT-XL/2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batches", default="64,256", help="images per run (the network sees twice as many)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--steps-lo", type=int, default=5)
    parser.add_argument("--steps-hi", type=int, default=15)
    parser.add_argument("--report-steps", default="50,250", help="step counts to report images/s for")
    parser.add_argument("--check-steps", type=int, default=50, help="one direct run of ddim at the first batch")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--vae", choices=["sd", "tiny"], default="sd", help="tiny: a small VAE for smoke tests")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false", help="ditlab: no CUDA graphs")
    parser.add_argument("--no-fused", dest="fused", action="store_false", help="ditlab: no fused kernels")
    parser.add_argument("--no-cudnn", dest="cudnn", action="store_false", help="ditlab: torch's attention order")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run on a GPU machine, or pass --device cpu for a smoke test")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = [int(b) for b in args.batches.split(",")]
    samplers = args.samplers.split(",")
    report = [int(s) for s in args.report_steps.split(",")]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    import diffusers

    print(f"{card}; torch {torch.__version__}; diffusers {diffusers.__version__}; {args.model}, {args.dtype}",
          flush=True)
    t_build = time.perf_counter()
    model, theirs, vae, vae_theirs = build(args, device, dtype)
    ours_run, graphed = ditlab_runner(model, vae, args, device, dtype)
    theirs_run = diffusers_runner(theirs, vae_theirs, device)

    # The two networks compute the same function (to bf16 rounding): one guided-batch forward each.
    side = args.image_size // 8
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(8, 4, side, side, device=device, generator=g)
    t = torch.full((8,), 500.0, device=device)
    y = torch.arange(8, device=device)
    with torch.inference_mode():
        a = model(x.to(dtype), t, y).float()
        b = theirs(x.to(dtype), timestep=t, class_labels=y).sample.float()
    rel = ((a - b).norm() / b.norm()).item()
    print(f"same function: relative difference of one forward {rel:.2e} ({args.dtype})", flush=True)
    result = {"card": card, "torch": torch.__version__, "diffusers": diffusers.__version__, "model": args.model,
              "dtype": args.dtype, "cfg_scale": CFG, "forward_rel_diff": rel, "rows": [], "check": None,
              "ditlab_switches": {"graphs": args.graphs, "fused": args.fused, "cudnn": args.cudnn}}
    for batch in batches:
        labels = [(7 * i) % 1000 for i in range(batch)]
        t0 = time.perf_counter()
        for sampler in samplers:  # warm-up: kernels, autotuning, compiled regions, the graph of this batch
            attention(device, True, args)
            ours_run(labels, sampler, 2)
            attention(device, False)
            theirs_run(labels, sampler, 2)
        print(f"batch {batch}: warm-up {time.perf_counter() - t0:.1f}s", flush=True)
        for sampler in samplers:
            times = {}
            for steps in (args.steps_lo, args.steps_hi):
                attention(device, True, args)
                times[("ditlab", steps)] = timed(sync, ours_run, labels, sampler, steps)
                attention(device, False)
                times[("diffusers", steps)] = timed(sync, theirs_run, labels, sampler, steps)
            row = {"batch": batch, "sampler": sampler}
            for side_name in ("ditlab", "diffusers"):
                lo, hi = times[(side_name, args.steps_lo)], times[(side_name, args.steps_hi)]
                per_step = (hi - lo) / (args.steps_hi - args.steps_lo)
                fixed = max(lo - args.steps_lo * per_step, 0.0)
                row[side_name] = {"per_step_s": per_step, "fixed_s": fixed,
                                  **{f"images_per_s_{s}": batch / (fixed + s * per_step) for s in report}}
            for s in report:
                row[f"ratio_{s}"] = row["ditlab"][f"images_per_s_{s}"] / row["diffusers"][f"images_per_s_{s}"]
            result["rows"].append(row)
            print(f"  batch {batch:4d} {sampler:9s} per step ditlab {1e3 * row['ditlab']['per_step_s']:7.1f} ms, "
                  f"diffusers {1e3 * row['diffusers']['per_step_s']:7.1f} ms; fixed {row['ditlab']['fixed_s']:.2f} / "
                  f"{row['diffusers']['fixed_s']:.2f} s; " + ", ".join(
                      f"{s} steps {row['ditlab'][f'images_per_s_{s}']:.2f} vs "
                      f"{row['diffusers'][f'images_per_s_{s}']:.2f} img/s = {row[f'ratio_{s}']:.2f}x" for s in report),
                  flush=True)
    if args.check_steps:
        batch, steps = batches[0], args.check_steps
        labels = [(7 * i) % 1000 for i in range(batch)]
        attention(device, True, args)
        ours_s = timed(sync, ours_run, labels, "ddim", steps)
        attention(device, False)
        theirs_s = timed(sync, theirs_run, labels, "ddim", steps)
        row = next((r for r in result["rows"] if r["batch"] == batch and r["sampler"] == "ddim"), None)
        computed = None
        if row is not None:
            computed = {k: batch / (row[k]["fixed_s"] + steps * row[k]["per_step_s"]) for k in ("ditlab", "diffusers")}
        result["check"] = {"batch": batch, "sampler": "ddim", "steps": steps, "ditlab_images_per_s": batch / ours_s,
                           "diffusers_images_per_s": batch / theirs_s, "ratio": theirs_s / ours_s, "computed": computed}
        print(f"measured outright: ddim {steps} steps, batch {batch}: ditlab {batch / ours_s:.2f} img/s, diffusers "
              f"{batch / theirs_s:.2f} img/s = {theirs_s / ours_s:.2f}x (computed: {computed})", flush=True)
    from ditlab.models import fused

    result["graph_replays"], result["graph_failed"] = graphed.replays, graphed.failed
    result["fused_failures"] = fused.failures()  # kernels that failed to compile ran eagerly
    result["seconds"] = time.perf_counter() - t_build
    print("| batch | sampler | " + " | ".join(f"{s} steps: ditlab / diffusers img/s (ratio)" for s in report) + " |")
    print("|---:|---|" + "---:|" * len(report))
    for r in result["rows"]:
        cells = [f"{r['ditlab'][f'images_per_s_{s}']:.2f} / {r['diffusers'][f'images_per_s_{s}']:.2f} "
                 f"(**{r[f'ratio_{s}']:.2f}x**)" for s in report]
        print(f"| {r['batch']} | {r['sampler']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

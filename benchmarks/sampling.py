"""Guided-sampling speed: ditlab's sampler + DiT against diffusers' DDIM loop + ``DiTTransformer2DModel``.

Both sample ``batch`` images with classifier-free guidance (scale 4), the conditional and unconditional
halves in ONE batched forward (2 x batch), DDIM with ``--steps`` steps, fp32 on CPU, the same weights
(``ditlab.interop.to_diffusers``) and the same starting noise. The diffusers side is the loop of its
``DiTPipeline`` without the VAE: ``DDIMScheduler`` + the transformer. Timed alternately in one process
with this machine's fp32 matmul throughput measured every round (see ``train_step.py`` for the clock):

    ratio    = diffusers time / ditlab time              (> 1: ditlab is faster)
    roofline = (forward FLOPs x 2 x batch x steps / time) / matmul FLOP/s

``--end-to-end`` adds what the user waits for with the demo model: seconds to 100 guided samples with
DDPM (250 steps), DDIM (50) and DPM-Solver++ (20).

    python benchmarks/sampling.py                        # paper and demo scale, 5 rounds
    python benchmarks/sampling.py --scale demo --end-to-end
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import train_step as tb

CFG = 4.0


def ditlab_sampler(model, g: tb.Geometry, steps: int, noise: torch.Tensor, y: torch.Tensor, sampler: str = "ddim"):
    """A function that runs ditlab's guided sampler once."""
    from ditlab.diffusion import create_process

    process = create_process("ddpm", learn_sigma=g.learn_sigma)
    null = torch.full_like(y, g.classes)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return process.sample(model, noise, sampler=sampler, steps=steps, model_kwargs={"y": y},
                                  cfg_scale=CFG, uncond_model_kwargs={"y": null})

    return run


def diffusers_sampler(model, g: tb.Geometry, steps: int, noise: torch.Tensor, y: torch.Tensor):
    """The denoising loop of diffusers' DiTPipeline (cond and null labels in one batch), without the VAE."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, timestep_spacing="linspace")
    labels = torch.cat([y, torch.full_like(y, g.classes)])

    def run() -> torch.Tensor:
        scheduler.set_timesteps(steps)
        latents = noise.clone()
        with torch.inference_mode():
            for t in scheduler.timesteps:
                both = torch.cat([latents, latents])
                out = model(both, timestep=t.expand(both.shape[0]), class_labels=labels).sample
                eps = out[:, : g.channels]  # learned sigma: the pipeline keeps the eps half
                cond, uncond = eps.chunk(2)
                guided = uncond + CFG * (cond - uncond)
                latents = scheduler.step(guided, t, latents).prev_sample
        return latents

    return run


def timed(fn) -> float:
    t0 = tb.CLOCK()
    fn()
    return tb.CLOCK() - t0


def bench_geometry(g: tb.Geometry, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    ours = tb.build_ditlab(g).eval()
    theirs = tb.diffusers_twin(ours)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(g.batch, g.channels, g.side, g.side, generator=gen)
    y = torch.randint(0, g.classes, (g.batch,), generator=gen)
    runs = {"ditlab": ditlab_sampler(ours, g, steps, noise, y),
            "diffusers": diffusers_sampler(theirs, g, steps, noise, y)}
    for fn in runs.values():
        fn()  # warm-up
    fwd, _ = tb.forward_flops(g)
    flops = fwd * 2 * g.batch * steps
    times: dict[str, list[float]] = {k: [] for k in runs}
    roof: list[float] = []
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
            times[name].append(timed(runs[name]))
        roof.append(tb.matmul_flops_per_s())
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items())
              + f", matmul {roof[-1] / 1e9:.1f} GFLOP/s", flush=True)
    rows = {}
    for name, ts in times.items():
        rows[name] = {
            "run_s": statistics.median(ts),
            "per_step_s": statistics.median(ts) / steps,
            "images_per_s": g.batch / statistics.median(ts),
            "roofline": statistics.median([flops / t / m for t, m in zip(ts, roof, strict=True)]),
            "ratio_vs_ditlab": statistics.median([t / o for t, o in zip(ts, times["ditlab"], strict=True)]),
        }
    return {"geometry": g.__dict__, "steps": steps, "forward_gflops_per_sample": fwd / 1e9,
            "matmul_gflops_median": statistics.median(roof) / 1e9, "rows": rows}


def end_to_end(num: int = 100) -> list[dict]:
    """Seconds to ``num`` guided samples with the demo model, for the sampler settings a user picks."""
    g = [x for x in tb.geometries("demo")][0]
    model = tb.build_ditlab(g).eval()
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(num, g.channels, g.side, g.side, generator=gen)
    y = torch.arange(num) % g.classes
    out = []
    for sampler, steps in (("ddpm", 250), ("ddim", 50), ("dpmpp_2m", 20)):
        t = timed(ditlab_sampler(model, g, steps, noise, y, sampler=sampler))
        out.append({"sampler": sampler, "steps": steps, "seconds": t, "num": num})
        print(f"  {sampler} {steps} steps: {t:.1f}s for {num} guided samples", flush=True)
    return out


def report(result: dict) -> str:
    g = result["geometry"]
    lines = [
        f"{g['label']}: batch {g['batch']} (forward batch {2 * g['batch']}), {result['steps']} DDIM steps, cfg {CFG}; "
        f"{result['forward_gflops_per_sample']:.2f} GFLOP fwd/sample; "
        f"matmul {result['matmul_gflops_median']:.1f} GFLOP/s",
        "| sampler loop | run (s) | per step (s) | images/s | diffusers time / this | roofline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        speed = result["rows"]["diffusers"]["run_s"] / r["run_s"]
        lines.append(f"| {name} | {r['run_s']:.3f} | {r['per_step_s']:.4f} | {r['images_per_s']:.2f} | {speed:.2f} | "
                     f"{100 * r['roofline']:.0f}% |")
    lines.append(f"ditlab is {result['rows']['diffusers']['ratio_vs_ditlab']:.2f}x as fast as diffusers "
                 f"(median of same-round time ratios)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["paper", "demo", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per timed run")
    parser.add_argument("--end-to-end", action="store_true", help="seconds to 100 guided demo samples per sampler")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="default: 1 with --clock cpu, torch's with wall")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    tb.set_clock(args.clock)
    threads = args.threads or (1 if args.clock == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32 CPU, {args.clock} clock", flush=True)
    results: dict = {"scales": []}
    for g in tb.geometries(args.scale):
        print(f"{g.label} ...", flush=True)
        results["scales"].append(bench_geometry(g, args.rounds, args.steps))
        print(report(results["scales"][-1]), flush=True)
    if args.end_to_end:
        print("end to end, mnist demo model:", flush=True)
        results["end_to_end"] = end_to_end()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

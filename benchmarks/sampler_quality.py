"""Sampler accuracy per network evaluation, with the exact denoiser of a Gaussian mixture (no network).

Data: a 2-D mixture of two Gaussians (weights 0.4 / 0.6) whose posterior mean E[x0 | x_t] is known in
closed form (``ditlab.diffusion.analytic``), so every error below is the sampler's alone. Each row
runs one sampler of one process (``ddpm``: linear schedule, T = 1000, fixed variance; ``flow``:
rectified flow, no shift) from the same noise and reports the sliced Wasserstein-1 distance
(mean over 64 random directions of the 1-D W1) to the target distribution:

- unguided: the data distribution, represented by 200k exact samples;
- guided (class-conditional, the class = the component, CFG scale 3, null label = the whole mixture):
  a guided sampler has no closed-form target, so the reference is the same kind of dynamics solved
  finely from independent noise: the probability-flow ODE (DPM-Solver++ 250 steps for ddpm, Heun 100
  steps for flow) for ODE samplers, DDPM with all 1000 steps for DDPM ancestral, Euler-Maruyama with
  1000 steps for the flow SDE.

The "floor" row is an independent exact sample of the same size: the distance's own Monte-Carlo
noise. The summary checks the issue's bar, DPM-Solver++(2M) at 20 evaluations at least as accurate as
DDPM at 250, unguided, as a paired difference over ``--repeats`` independent draws of ``--summary-n``
samples against 1M exact samples (one draw cannot rank them: see ``summary``).

    python benchmarks/sampler_quality.py              # ~10 min on 2 busy CPU cores
    python benchmarks/sampler_quality.py --n 5000 --quick --repeats 0
    python benchmarks/sampler_quality.py --repeats 0 --only ddpm:heun --only flow:dpmpp_2m
"""
from __future__ import annotations

import argparse
import time

import torch

from ditlab.diffusion import create_process
from ditlab.diffusion.analytic import GaussianMixture

MIXTURE = GaussianMixture(
    torch.tensor([[-1.2, 0.4], [1.0, -0.6]]),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.15, -0.05], [-0.05, 0.25]]]),
    [0.4, 0.6],
)
NULL = MIXTURE.num_components
# (process, sampler, NFE list); heun makes 2 evaluations per step (on ddpm 2 per step - 1: none at sigma = 0).
PLAN = [
    ("ddpm", "ddpm", [25, 50, 100, 250]),
    ("ddpm", "ddim", [10, 20, 50, 100]),
    ("ddpm", "dpmpp_2m", [5, 10, 20, 50]),
    ("ddpm", "euler", [10, 20, 50, 100]),
    ("ddpm", "heun", [9, 19, 49, 99]),
    ("ddpm", "euler_maruyama", [25, 50, 100, 250]),
    ("flow", "euler", [10, 20, 50, 100]),
    ("flow", "heun", [10, 20, 50, 100]),
    ("flow", "euler_maruyama", [25, 50, 100, 250]),
    ("flow", "ddim", [10, 20, 50, 100]),
    ("flow", "dpmpp_2m", [5, 10, 20, 50]),
]
QUICK = {"ddpm": [250], "ddim": [20], "dpmpp_2m": [10, 20], "euler": [20], "heun": [19, 20], "euler_maruyama": [100]}
REFERENCE = {  # guided references: the same dynamics, finely solved
    ("ddpm", "ddpm"): ("ddpm", 1000),
    ("ddpm", "ddim"): ("dpmpp_2m", 250),
    ("ddpm", "dpmpp_2m"): ("dpmpp_2m", 250),
    ("ddpm", "euler"): ("dpmpp_2m", 250),
    ("ddpm", "heun"): ("dpmpp_2m", 250),
    ("ddpm", "euler_maruyama"): ("euler_maruyama", 1000),
    ("flow", "euler"): ("heun", 100),
    ("flow", "heun"): ("heun", 100),
    ("flow", "euler_maruyama"): ("euler_maruyama", 1000),
    ("flow", "ddim"): ("heun", 100),
    ("flow", "dpmpp_2m"): ("heun", 100),
}


def steps_for(kind: str, sampler: str, nfe: int) -> int:
    """Solver steps that make ``nfe`` network evaluations."""
    if sampler != "heun":
        return nfe
    return (nfe + 1) // 2 if kind == "ddpm" else nfe // 2


def project(ref: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sorted projections (m, P) of a reference sample, computed once per reference."""
    return (ref @ directions).sort(dim=0).values


def sliced_w1(x: torch.Tensor, ref_sorted: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over directions of the 1-D W1 between x's projections and a (possibly larger) sorted reference."""
    px = (x @ directions).sort(dim=0).values  # (n, P)
    pr = ref_sorted  # (m, P)
    n, m = px.shape[0], pr.shape[0]
    idx = ((torch.arange(n, dtype=torch.float64) + 0.5) * m / n).long().clamp(max=m - 1)  # matching quantiles
    return float((px - pr[idx]).abs().mean())


def run(process, sampler: str, nfe: int, noise, labels, cfg: float, seed: int) -> torch.Tensor:
    steps = steps_for(process.kind, sampler, nfe)
    model = MIXTURE.ddpm_model(process) if process.kind == "ddpm" else MIXTURE.flow_model()
    torch.manual_seed(seed)  # the stochastic samplers' noise
    kwargs = {}
    if cfg != 1.0:
        kwargs = dict(model_kwargs={"y": labels}, cfg_scale=cfg,
                      uncond_model_kwargs={"y": torch.full_like(labels, NULL)})
    return process.sample(model, noise, sampler=sampler, steps=steps, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="samples per row")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance scale of the guided columns")
    parser.add_argument("--quick", action="store_true", help="only the NFE counts the summary needs")
    parser.add_argument("--no-guidance", action="store_true")
    parser.add_argument("--only", action="append", metavar="PROCESS:SAMPLER",
                        help="run only these rows, e.g. --only flow:dpmpp_2m (repeatable)")
    parser.add_argument("--summary-n", type=int, default=100_000,
                        help="samples per draw of the unguided DPM-Solver++ 20 vs DDPM 250 check")
    parser.add_argument("--repeats", type=int, default=4, help="independent draws of that check (0: skip it)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give

    g = torch.Generator().manual_seed(0)
    directions = torch.randn(2, 64, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=0)
    exact = project(MIXTURE.sample(200_000, g), directions)
    noise = torch.randn(args.n, 2, generator=g, dtype=torch.float64)
    ref_noise = torch.randn(args.n, 2, generator=g, dtype=torch.float64)
    labels = torch.multinomial(MIXTURE.weights, args.n, replacement=True, generator=g)
    processes = {"ddpm": create_process("ddpm", learn_sigma=False), "flow": create_process("flow")}
    floor = sliced_w1(MIXTURE.sample(args.n, g), exact, directions)

    guided_refs = {}
    if not args.no_guidance:
        for (kind, sampler), (ref_sampler, ref_nfe) in REFERENCE.items():
            key = (kind, ref_sampler, ref_nfe)
            if args.only and f"{kind}:{sampler}" not in args.only and key != ("flow", "heun", 100):
                continue
            if key not in guided_refs:
                ref = run(processes[kind], ref_sampler, ref_nfe, ref_noise, labels, args.cfg, seed=99)
                guided_refs[key] = project(ref, directions)
        # The floor of an empirical-vs-empirical distance at this n: two references of the same dynamics.
        guided_floor = sliced_w1(run(processes["flow"], "heun", 100, noise, labels, args.cfg, seed=98),
                                 guided_refs[("flow", "heun", 100)], directions)

    rows, results = [], {}
    print(f"n = {args.n} samples per row; sliced W1 to the target (lower is better)")
    header = f"| process | sampler | NFE | SW1 unguided | SW1 guided (cfg {args.cfg:g}) | seconds |"
    print(header + "\n|---|---|---:|---:|---:|---:|")
    for kind, sampler, nfes in PLAN:
        if args.only and f"{kind}:{sampler}" not in args.only:
            continue
        for nfe in ([n for n in QUICK[sampler] if n in nfes] if args.quick else nfes):
            t0 = time.perf_counter()
            x = run(processes[kind], sampler, nfe, noise, labels, 1.0, seed=1)
            un = sliced_w1(x, exact, directions)
            gd = float("nan")
            if not args.no_guidance:
                ref_sampler, ref_nfe = REFERENCE[(kind, sampler)]
                xg = run(processes[kind], sampler, nfe, noise, labels, args.cfg, seed=1)
                gd = sliced_w1(xg, guided_refs[(kind, ref_sampler, ref_nfe)], directions)
            if kind == "ddpm":
                results[(sampler, nfe)] = (un, gd)
            row = f"| {kind} | {sampler} | {nfe} | {un:.4f} | {gd:.4f} | {time.perf_counter() - t0:.1f} |"
            rows.append(row)
            print(row, flush=True)
    print(f"| floor | exact samples | - | {floor:.4f} | "
          f"{guided_floor if not args.no_guidance else float('nan'):.4f} | - |")
    dpm, ddpm = results.get(("dpmpp_2m", 20)), results.get(("ddpm", 250))
    if not args.no_guidance and dpm and ddpm:
        print(f"guided (n = {args.n}, one draw): DPM-Solver++(2M) 20 NFE SW1 = {dpm[1]:.4f}, "
              f"DDPM 250 NFE SW1 = {ddpm[1]:.4f}, ratio {dpm[1] / ddpm[1]:.2f}")
    if args.repeats:
        summary(processes, directions, g, args.summary_n, args.repeats)


def summary(processes, directions, g, n: int, repeats: int) -> None:
    """Unguided DPM-Solver++(2M) at 20 NFE vs DDPM at 250, paired over independent noise draws.

    At these errors the sample's own fluctuation (mostly the binomial split between the two modes)
    is of the same size as the samplers' bias, so one draw cannot rank them; the paired difference
    over ``repeats`` draws, with its standard error, can.
    """
    exact = project(MIXTURE.sample(1_000_000, g), directions)
    rows = []
    for r in range(repeats):
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
        dpm = sliced_w1(run(processes["ddpm"], "dpmpp_2m", 20, noise, None, 1.0, seed=10 + r), exact, directions)
        ddpm = sliced_w1(run(processes["ddpm"], "ddpm", 250, noise, None, 1.0, seed=10 + r), exact, directions)
        floor = sliced_w1(MIXTURE.sample(n, g), exact, directions)
        rows.append((dpm, ddpm, floor))
        print(f"summary draw {r}: n = {n}, DPM-Solver++(2M) 20 NFE {dpm:.4f}, DDPM 250 NFE {ddpm:.4f}, "
              f"floor {floor:.4f}", flush=True)
    t = torch.tensor(rows, dtype=torch.float64)  # (repeats, 3)
    mean = t.mean(0)
    diff = t[:, 0] - t[:, 1]
    se = float(diff.std() / repeats**0.5) if repeats > 1 else float("nan")
    if float(diff.mean()) <= 0:
        verdict = "OK: DPM-Solver++(2M) at 20 NFE is at least as accurate"
    elif float(diff.mean()) < 2 * se:
        verdict = "TIE: the difference is within 2 standard errors"
    else:
        verdict = "NOT MET: DDPM at 250 NFE is more accurate"
    print(f"unguided over {repeats} draws of n = {n}: DPM-Solver++(2M) 20 NFE {float(mean[0]):.4f}, "
          f"DDPM 250 NFE {float(mean[1]):.4f}, floor {float(mean[2]):.4f}; "
          f"difference {float(diff.mean()):+.4f} +- {se:.4f} (1 s.e.) -> {verdict}")


if __name__ == "__main__":
    main()

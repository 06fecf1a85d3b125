"""GPU training throughput of DiT-XL/2 at 256x256: samples/s, peak memory and model FLOPs utilisation.

It trains ditlab's DiT-XL/2 on 32x32x4 latents (256 px through the SD-VAE), 1000 classes, learned sigma,
the DDPM hybrid loss, bf16 autocast, fused AdamW, and times each variant in turn, in one process. A
variant is a ``+``-joined set of switches (``eager`` = none). ``fused`` and ``graphs`` are ditlab's
opt-in GPU paths (off by default until measured: ``ditlab train --fused_kernels --cuda_graphs``); this
script turns them on explicitly where a variant names them:

    fused        adaLN modulate + LayerNorm and gate + residual as small compiled kernels (models/fused.py)
    graphs       forward + loss + backward replayed as one CUDA graph (models/cuda_graph.py)
    regional     torch.compile of each block (DiT.compile_blocks): one compiled graph serves all blocks
    whole        torch.compile of the whole model (``compiled`` is an alias)
    autotune     compile with mode="max-autotune-no-cudagraphs" (with regional or whole)
    cudnn        scaled_dot_product_attention tries cuDNN's attention first (else torch's order: flash)
    math         SDPA forced to the plain math kernel (``math_attn``): what the fused kernels buy
    ckpt, ckptN  gradient checkpointing of every block, or of the first N blocks
    sync         a host sync every step (``loss.item()``), as a loop that prints every loss would have

For each: samples/s, step time, peak GPU memory (after warm-up: weights, gradients, AdamW state and
activations), warm-up time (compilation happens there), and MFU = 3 x forward FLOPs x samples/s / the
card's dense bf16 peak. Forward FLOPs come from the project's Gflops counter (``ditlab.evaluation.flops``,
attention included: 118.6 GMACs per 256-px image for XL/2, as in the paper) x 2 FLOPs per MAC.

    python benchmarks/gpu_train.py --variants eager,fused+graphs,regional+cudnn --batch 128 --json out.json
    python benchmarks/gpu_train.py --variants regional+cudnn --profile prof.txt     # top kernels of one step
    python benchmarks/gpu_train.py --table fused+cudnn+graphs --json table.json    # the paper's 12 models
    python benchmarks/gpu_train.py --device cpu --model DiT-Test/2 --image-size 32 --batch 2 \\
        --dtype fp32 --steps 2 --warmup 1 --variants eager,ckpt --peak-tflops 0.1   # smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import time

import torch

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; matched in order
# against torch.cuda.get_device_name(). Pass --peak-tflops for any other card.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("A6000", 154.8),
]
VARIANTS = ("eager", "ckpt", "sync", "math_attn", "compiled")
SWITCHES = ("fused", "graphs", "regional", "whole", "autotune", "cudnn", "math", "sync", "ckpt")
ALIASES = {"eager": (), "compiled": ("whole",), "math_attn": ("math",)}
PAPER_MODELS = [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)]
# Kernel families of a profile, matched in order on the kernel name.
KERNEL_FAMILIES = [
    ("attention", r"flash|fmha|sdpa|attention|attn"),
    ("gemm", r"gemm|cutlass|xmma|nvjet|cublas|s16816|s1688|wgmma"),
    ("optimizer", r"adam|multi_tensor"),
    ("fused (triton)", r"^triton_"),
    ("norm / elementwise / other", r"."),
]


def parse_variant(name: str) -> frozenset[str]:
    """``regional+cudnn+graphs`` -> its switches; raises ValueError for unknown ones."""
    parts: list[str] = []
    for part in name.split("+"):
        parts.extend(ALIASES.get(part, (part,)))
    for p in parts:
        if p not in SWITCHES and not re.fullmatch(r"ckpt\d+", p):
            raise ValueError(f"unknown switch {p!r} in variant {name!r}")
    return frozenset(parts)


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """(dense bf16 peak in FLOP/s or None, the card's name)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if override_tflops:
        return override_tflops * 1e12, name
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, name
    return None, name


def forward_flops_per_sample(model_name: str, latent_side: int) -> float:
    from ditlab.evaluation.flops import count_gflops
    from ditlab.models import create_model

    return count_gflops(create_model(model_name, input_size=latent_side, device="meta")) * 2e9


def _apply_switches(sw: frozenset[str], model, device: torch.device):
    """Set up the model and process state for a variant; returns (network, SDPA context factory)."""
    from ditlab.models import fused

    fused.set_enabled("fused" in sw)  # only where the variant asks (ditlab's default: off)
    if device.type == "cuda":
        fused.prefer_cudnn_attention("cudnn" in sw)
    ckpt = [p for p in sw if p.startswith("ckpt")]
    if ckpt:
        model.set_grad_checkpointing(True if ckpt[0] == "ckpt" else int(ckpt[0][4:]))
    options = {"mode": "max-autotune-no-cudagraphs"} if "autotune" in sw else {}
    net = model
    if "regional" in sw:
        model.compile_blocks(**options)
    elif "whole" in sw:
        net = torch.compile(model, **options)
    attention = contextlib.nullcontext
    if "math" in sw:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = lambda: sdpa_kernel(SDPBackend.MATH)  # noqa: E731
    return net, attention


def kernel_families(prof) -> dict[str, float]:
    """GPU kernel time (ms) per family over a profile."""
    totals = {family: 0.0 for family, _ in KERNEL_FAMILIES}
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = evt.time_range.elapsed_us() / 1e3
        for family, pattern in KERNEL_FAMILIES:
            if re.search(pattern, evt.name, re.IGNORECASE):
                totals[family] += ms
                break
    return totals


def run_variant(variant: str, args, device: torch.device, dtype: torch.dtype | None, *, model_name: str | None = None,
                batch: int | None = None, profile_path: str | None = None) -> dict:
    """Train ``args.warmup + args.steps`` steps of a fresh model with one variant; time the last ones."""
    from ditlab.diffusion import create_process
    from ditlab.models import create_model
    from ditlab.models.cuda_graph import GraphedStep

    sw = parse_variant(variant)
    model_name = model_name or args.model
    batch = batch or args.batch
    torch._dynamo.reset()
    torch.manual_seed(0)
    side = args.image_size // 8
    model = create_model(model_name, input_size=side, num_classes=1000, learn_sigma=True, device=device)
    process = create_process("ddpm", learn_sigma=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    net, attention = _apply_switches(sw, model, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x0 = torch.randn(batch, 4, side, side, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    graphs = "graphs" in sw and not scaler.is_enabled()

    def forward(x, t, **kw):  # as the trainer: the network in low precision, the loss in fp32
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=not graphs):  # (a recorded step keeps no cast cache, as in the trainer)
            return net(x, t, **kw).float()

    def loss_fn(x0, y, t, noise):
        return process.training_loss(forward, x0, {"y": y}, t=t, noise=noise).mean()

    graphed = GraphedStep(loss_fn, model.parameters()) if graphs else None

    def step() -> torch.Tensor:
        t = torch.randint(0, process.num_timesteps, (batch,), device=device)
        noise = torch.randn_like(x0)
        with attention():
            if graphed is not None:
                loss = graphed(x0=x0, y=y, t=t, noise=noise)
            else:
                loss = loss_fn(x0, y, t, noise)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t_compile
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    loss = None
    for _ in range(args.steps):
        loss = step()
        if "sync" in sw:
            loss.item()  # a host sync every step, as a loop that prints every loss would have
    sync()
    elapsed = time.perf_counter() - t0
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    row = {"variant": variant, "model": model_name, "batch": batch, "samples_per_s": batch * args.steps / elapsed,
           "step_ms": 1e3 * elapsed / args.steps, "peak_mem_gib": peak_mem, "warmup_s": warmup_s,
           "final_loss": float(loss) if loss is not None else float("nan")}
    from ditlab.models import fused

    # what really ran: a fused kernel that fails to compile runs eagerly, so does a graph that cannot be recorded
    row["fused"] = fused.is_enabled()
    row["fused_failures"] = fused.failures()
    row["graph_replays"] = graphed.replays if graphed is not None else 0
    row["graph_failed"] = graphed.failed if graphed is not None else None
    if profile_path:
        row["profile"] = profile(step, sync, profile_path, f"{model_name}, batch {batch}, {variant}")
    # Drop the last references (the closures above share these cells) so that empty_cache can hand the
    # weights, gradients and AdamW state back before the next variant builds its own.
    model = optimizer = net = graphed = None
    fused.set_enabled(False)
    if device.type == "cuda":
        fused.prefer_cudnn_attention(False)
        torch.cuda.empty_cache()
    return row


def profile(step, sync, path: str, title: str, steps: int = 2) -> dict:
    """Profile ``steps`` steps: the top kernels table and the time per kernel family, written to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall_ms = 1e3 * (time.perf_counter() - t0) / steps
    families = {k: v / steps for k, v in kernel_families(prof).items()}
    busy = sum(families.values())
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=90)
    except (AttributeError, KeyError, ValueError):
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
    lines = [f"# {title}: {wall_ms:.1f} ms per step (wall, profiled), GPU kernels {busy:.1f} ms", ""]
    lines += [f"{family:28s} {ms:9.2f} ms  {100 * ms / max(busy, 1e-9):5.1f}%" for family, ms in families.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n\n" + table + "\n")
    print("\n".join(lines), flush=True)
    return {"wall_ms": wall_ms, "kernel_ms": busy, "families_ms": families}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DiT-XL/2")
    parser.add_argument("--image-size", type=int, default=256, help="pixels; latents are 1/8 of it")
    parser.add_argument("--batch", type=int, default=32, help="per GPU")
    parser.add_argument("--batches", help="comma list: run every variant at each of these batch sizes")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of variants (see above)")
    parser.add_argument("--profile", metavar="TXT", help="profile two steps of one variant into this file")
    parser.add_argument("--profile-variant", help="the variant to profile (default: the first)")
    parser.add_argument("--table", metavar="VARIANT", help="run this variant for the paper's 12 models instead")
    parser.add_argument("--table-tokens", type=int, default=32768,
                        help="tokens per batch in --table (batch = this / tokens per image)")
    parser.add_argument("--table-models", default=",".join(PAPER_MODELS), help="the models of --table")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for v in variants + ([args.table] if args.table else []):
            parse_variant(v)
    except ValueError as err:
        parser.error(f"{err}; switches: {', '.join(SWITCHES)}, ckptN")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run on a GPU machine, or pass --device cpu for a smoke test")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (loss, optimiser) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    peak, card = peak_flops(device, args.peak_tflops)
    side = args.image_size // 8
    jobs: list[tuple[str, str, int]] = []  # (variant, model, batch)
    if args.table:
        for name in args.table_models.split(","):
            tokens = (side // int(name.rsplit("/", 1)[1])) ** 2
            jobs.append((args.table, name, max(1, args.table_tokens // tokens)))
    else:
        batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch]
        jobs = [(v, args.model, b) for b in batches for v in variants]
    print(f"{card}; torch {torch.__version__}; {args.image_size}px, {args.dtype}; peak "
          f"{peak / 1e12 if peak else float('nan'):.4g} TFLOP/s", flush=True)
    rows, flops = [], {}
    profile_job = next((i for i, job in enumerate(jobs) if job[0] == args.profile_variant), 0)
    for i, (v, name, b) in enumerate(jobs):
        if name not in flops:
            flops[name] = forward_flops_per_sample(name, side)
        try:
            r = run_variant(v, args, device, dtype, model_name=name, batch=b,
                            profile_path=args.profile if i == profile_job else None)
        except Exception as err:  # one variant failing (a kernel this card lacks, memory) must not sink the rest
            print(f"  {name} {v} batch {b}: FAILED {type(err).__name__}: {str(err)[:300]}", flush=True)
            rows.append({"variant": v, "model": name, "batch": b, "error": f"{type(err).__name__}: {str(err)[:300]}"})
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        r["gflops_forward"] = flops[name] / 1e9
        r["mfu"] = 3 * flops[name] * r["samples_per_s"] / peak if peak else float("nan")
        rows.append(r)
        print(f"  {name:9s} b{b:<5d} {v:28s} {r['samples_per_s']:8.1f} samples/s {r['step_ms']:8.1f} ms/step  "
              f"peak {r['peak_mem_gib']:6.2f} GiB  MFU {100 * r['mfu']:5.1f}%  (warm-up {r['warmup_s']:.0f}s)",
              flush=True)
    print("| model | batch | variant | samples/s | ms/step | peak memory (GiB) | MFU | warm-up (s) |\n"
          "|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['batch']} | {r['variant']} | failed: {r['error'][:60]} | | | | |")
            continue
        print(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['samples_per_s']:.1f} | {r['step_ms']:.1f} | "
              f"{r['peak_mem_gib']:.2f} | {100 * r['mfu']:.1f}% | {r['warmup_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "torch": torch.__version__, "model": args.model, "image_size": args.image_size,
                       "batch": args.batch, "dtype": args.dtype, "forward_flops_per_sample": flops.get(args.model),
                       "peak_flops": peak, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU training throughput of DiT-XL/2 at 256x256: samples/s, peak memory and model FLOPs utilisation.

One short script for whenever a GPU is at hand (a few minutes on one H100). It trains ditlab's DiT-XL/2
on 32x32x4 latents (256 px through the SD-VAE), 1000 classes, learned sigma, the DDPM hybrid loss,
batch 32, bf16 autocast, AdamW (fused), and times each speed switch in turn, in one process:

    eager          the default path: fused QKV + SDPA (flash attention on the GPU)
    ckpt           + gradient checkpointing (recompute each block in backward: less memory, more time)
    sync           + a host sync every step (``loss.item()``): what reading the loss each step costs
    math_attn      SDPA forced to the plain math kernel: what flash attention buys
    compiled       torch.compile of the model

For each: samples/s, step time, peak GPU memory (after warm-up: weights, gradients, AdamW state and
activations), and MFU = 3 x forward FLOPs x samples/s / the card's dense bf16 peak. Forward FLOPs come
from the project's Gflops counter (``ditlab.evaluation.flops``, meta device, attention included:
118.6 GMACs per 256-px image for XL/2, as in the paper) x 2 FLOPs per MAC.

    python benchmarks/gpu_train.py                                  # everything, ~3 minutes on an H100
    python benchmarks/gpu_train.py --variants eager,ckpt --steps 30 --json out.json
    python benchmarks/gpu_train.py --device cpu --model DiT-Test/2 --image-size 32 --batch 2 \\
        --dtype fp32 --steps 2 --warmup 1 --variants eager,ckpt --peak-tflops 0.1   # smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import json
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


def run_variant(variant: str, args, device: torch.device, dtype: torch.dtype | None) -> dict:
    """Train ``args.warmup + args.steps`` steps of a fresh model with one switch flipped; time the last ones."""
    from ditlab.diffusion import create_process
    from ditlab.models import create_model

    torch.manual_seed(0)
    side = args.image_size // 8
    model = create_model(args.model, input_size=side, num_classes=1000, learn_sigma=True,
                         grad_checkpointing=variant == "ckpt").to(device)
    process = create_process("ddpm", learn_sigma=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    net = torch.compile(model) if variant == "compiled" else model
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    attention = contextlib.nullcontext
    if variant == "math_attn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = lambda: sdpa_kernel(SDPBackend.MATH)  # noqa: E731
    x0 = torch.randn(args.batch, 4, side, side, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def forward(x, t, **kw):  # as the trainer: the network in low precision, the loss in fp32
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return net(x, t, **kw).float()

    def step() -> torch.Tensor:
        with attention():
            loss = process.training_loss(forward, x0, {"y": y}).mean()
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
        if variant == "sync":
            loss.item()  # a host sync every step, as a loop that prints every loss would have
    sync()
    elapsed = time.perf_counter() - t0
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    # Drop the last references (the closures above share these cells) so that empty_cache can hand the
    # weights, gradients and AdamW state back before the next variant builds its own.
    model = optimizer = net = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"variant": variant, "samples_per_s": args.batch * args.steps / elapsed,
            "step_ms": 1e3 * elapsed / args.steps, "peak_mem_gib": peak_mem, "warmup_s": warmup_s,
            "final_loss": float(loss) if loss is not None else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DiT-XL/2")
    parser.add_argument("--image-size", type=int, default=256, help="pixels; latents are 1/8 of it")
    parser.add_argument("--batch", type=int, default=32, help="per GPU")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run on a GPU machine, or pass --device cpu for a smoke test")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (loss, optimiser) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    peak, card = peak_flops(device, args.peak_tflops)
    fwd = forward_flops_per_sample(args.model, args.image_size // 8)
    print(f"{card}; torch {torch.__version__}; {args.model} at {args.image_size}px, batch {args.batch}, {args.dtype}; "
          f"{fwd / 1e9:.4g} GFLOP forward per sample; peak {peak / 1e12 if peak else float('nan'):.4g} TFLOP/s",
          flush=True)
    rows = []
    for v in variants:
        r = run_variant(v, args, device, dtype)
        r["mfu"] = 3 * fwd * r["samples_per_s"] / peak if peak else float("nan")
        rows.append(r)
        print(f"  {v:10s} {r['samples_per_s']:8.1f} samples/s  {r['step_ms']:8.1f} ms/step  "
              f"peak {r['peak_mem_gib']:6.2f} GiB  MFU {100 * r['mfu']:5.1f}%  (warm-up {r['warmup_s']:.0f}s)",
              flush=True)
    print("| variant | samples/s | ms/step | peak memory (GiB) | MFU |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['samples_per_s']:.1f} | {r['step_ms']:.1f} | {r['peak_mem_gib']:.2f} | "
              f"{100 * r['mfu']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "torch": torch.__version__, "model": args.model, "image_size": args.image_size,
                       "batch": args.batch, "dtype": args.dtype, "forward_flops_per_sample": fwd,
                       "peak_flops": peak, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training-step speed: ditlab's DiT against diffusers' ``DiTTransformer2DModel`` of the same geometry.

Both networks hold the same weights (``ditlab.interop.to_diffusers``), get the same batch, and run the
same step: forward, MSE on all output channels, backward, AdamW (fused). fp32 on CPU. They are timed
alternately in one process (the order flips every round), and every round also measures this
machine's fp32 matmul throughput (large square matmuls), so each round gives

    ratio     = diffusers time / ditlab time            (> 1: ditlab is faster)
    roofline  = (3 x forward FLOPs x batch / step time) / matmul FLOP/s

Forward FLOPs are the project's Gflops counter (``ditlab.evaluation.flops.count_gflops``, on the meta
device, which includes attention: 6.06 GMACs for DiT-S/2 at 256 px as in the paper) x 2 FLOPs per MAC.
Medians over rounds are printed. Times are CPU seconds of this process on one thread by default
(``--clock cpu``): on a machine shared with other jobs, waiting for a core does not count, so ratios and
roofline fractions are per core and stable; ``--clock wall --threads 0`` measures elapsed time on all
cores of a machine of one's own. The ditlab step is also broken down by replaying its GEMMs and
attention kernels alone: what is left is elementwise work, norms, GELU and AdamW.

Scales: ``paper`` = DiT-S/2 and DiT-B/2 at 256x256 (32x32x4 latents), learned sigma, 1000 classes,
batch 8; ``demo`` = the ``mnist`` preset's model and batch, read from the preset (4 blocks, width 192,
3 heads, patch 2, 8x8x4 latents, 10 classes, batch 64). ``--ablations`` adds ditlab rows with each speed switch flipped:
gradient checkpointing, and plain (unfused) attention instead of SDPA. ``--compile`` adds a
torch.compile row.

    python benchmarks/train_step.py                       # both scales, 5 rounds
    python benchmarks/train_step.py --scale demo --rounds 9 --ablations
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Geometry:
    label: str
    model: str
    depth: int
    hidden: int
    heads: int
    patch: int
    side: int  # latent side
    channels: int
    classes: int
    batch: int
    learn_sigma: bool = True


def geometries(scale: str) -> list[Geometry]:
    """The benchmark's model shapes: the paper's S/2 and B/2 at 256 px, or the mnist demo's model."""
    out = []
    if scale in ("paper", "all"):
        out += [Geometry("DiT-S/2 256px", "DiT-S/2", 12, 384, 6, 2, 32, 4, 1000, 8),
                Geometry("DiT-B/2 256px", "DiT-B/2", 12, 768, 12, 2, 32, 4, 1000, 8)]
    if scale in ("demo", "all"):
        from ditlab.config import PRESETS

        p = PRESETS["mnist"]
        side = p["image_size"] // p["vae_downsample"]
        out.append(Geometry("mnist demo", p["model"], p["depth"], p["hidden_size"], p["num_heads"], p["patch_size"],
                            side, p["vae_latent_channels"], 10, p["global_batch_size"], p["learn_sigma"]))
    return out


def build_ditlab(g: Geometry, device: str | torch.device = "cpu", **options) -> nn.Module:
    """A ditlab DiT of geometry ``g`` with every zero-initialised layer randomised (so that gradients
    reach every layer and the two implementations can be compared on a non-trivial function)."""
    from ditlab.models import create_model

    model = create_model(g.model, input_size=g.side, in_channels=g.channels, num_classes=g.classes,
                         depth=g.depth, hidden_size=g.hidden, num_heads=g.heads, patch_size=g.patch,
                         learn_sigma=g.learn_sigma, device=device, **options)
    if str(device) != "meta":
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _name, p in model.named_parameters():
                if p.requires_grad and not p.any():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def forward_flops(g: Geometry) -> tuple[float, float]:
    """(forward FLOPs per sample, of which attention), from the Gflops counter (MACs x 2)."""
    from ditlab.evaluation.flops import count_gflops

    total = count_gflops(build_ditlab(g, device="meta")) * 2e9
    tokens = (g.side // g.patch) ** 2
    attention = g.depth * 2 * 2 * tokens * tokens * g.hidden  # q k^T and attn v, 2 FLOPs per MAC
    return total, attention


def diffusers_twin(model: nn.Module) -> nn.Module:
    from ditlab.interop.diffusers import to_diffusers

    return to_diffusers(model)


CLOCK = time.process_time  # set by --clock: CPU seconds of this process (robust on a shared machine) or wall


def set_clock(kind: str) -> None:
    """``cpu``: process CPU time, which a busy machine does not inflate (use 1 thread: idle OpenMP threads
    spin and would count); ``wall``: elapsed time, right on a machine of one's own."""
    global CLOCK
    CLOCK = time.process_time if kind == "cpu" else time.perf_counter


def matmul_flops_per_s(n: int = 2048, reps: int = 3) -> float:
    """fp32 matmul throughput of this machine now: the best of ``reps`` n x n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = math.inf
    for _ in range(reps):
        t0 = CLOCK()
        torch.mm(a, b, out=c)
        best = min(best, CLOCK() - t0)
    return 2 * n**3 / best


def make_batch(g: Geometry, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(g.batch, g.channels, g.side, g.side, generator=gen)
    t = torch.randint(0, 1000, (g.batch,), generator=gen).float()
    y = torch.randint(0, g.classes, (g.batch,), generator=gen)
    target = torch.randn(g.batch, (2 if g.learn_sigma else 1) * g.channels, g.side, g.side, generator=gen)
    return x, t, y, target


def call(model: nn.Module, x, t, y):
    """The network output for either implementation."""
    if hasattr(model, "transformer_blocks"):  # diffusers
        return model(x, timestep=t, class_labels=y).sample
    return model(x, t, y)


class TrainStep:
    """One optimiser step of ``model`` on a fixed batch: forward, MSE, backward, fused AdamW."""

    def __init__(self, model: nn.Module, batch, context=contextlib.nullcontext):
        self.model, self.batch, self.context = model.train(), batch, context
        # fused, as ``ditlab train`` uses it: the same optimiser cost for both implementations
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def __call__(self) -> float:
        x, t, y, target = self.batch
        t0 = CLOCK()
        with self.context():
            loss = F.mse_loss(call(self.model, x, t, y), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return CLOCK() - t0


def saved_activation_bytes(model: nn.Module, batch, context=contextlib.nullcontext) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one step (parameters excluded):
    the activation memory that gradient checkpointing trades for recomputation."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    x, t, y, target = batch
    with context(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.mse_loss(call(model, x, t, y), target)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def state_bytes(model: nn.Module) -> int:
    """Parameters + gradients + AdamW's two moments (fp32)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return 4 * (4 * trainable + frozen)


@contextlib.contextmanager
def plain_attention():
    """Replace SDPA by the textbook softmax(q k^T / sqrt(d)) v (the 'SDPA off' ablation)."""
    original = F.scaled_dot_product_attention

    def naive(q, k, v, attn_mask=None, **_):
        w = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            w = w.masked_fill(~attn_mask, float("-inf"))
        return w.softmax(-1) @ v

    F.scaled_dot_product_attention = naive
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class _KernelRecorder:
    """Records the GEMM and attention kernels one training step runs (shapes, strides, arguments)."""

    GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")

    def __init__(self):
        self.calls: list[tuple[str, object, tuple, dict]] = []

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.name()
                kind = "gemm" if name in recorder.GEMMS else "attention" if "scaled_dot_product" in name else None
                if kind:
                    recorder.calls.append((kind, func, _describe(args), _describe(kwargs)))
                return func(*args, **kwargs)

        return Mode()


def _describe(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_describe(v) for v in value)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    return value


def _materialise(value):
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "tensor":
        _, shape, stride, dtype = value
        t = torch.empty_strided(shape, stride, dtype=dtype)
        return t.normal_() if dtype.is_floating_point else t.zero_()
    if isinstance(value, (list, tuple)):
        return type(value)(_materialise(v) for v in value)
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    return value


def _gemm_flops(func_name: str, args) -> float:
    shape = lambda i: args[i][1]  # noqa: E731
    if func_name == "aten::mm":
        (m, k), (_, n) = shape(0), shape(1)
        return 2.0 * m * k * n
    if func_name == "aten::addmm":
        (m, k), (_, n) = shape(1), shape(2)
        return 2.0 * m * k * n
    if func_name == "aten::bmm":
        (b, m, k), (_, _, n) = shape(0), shape(1)
        return 2.0 * b * m * k * n
    (b, m, k), (_, _, n) = shape(1), shape(2)  # baddbmm
    return 2.0 * b * m * k * n


def kernel_breakdown(step: TrainStep, reps: int = 2) -> dict:
    """Replay the GEMMs and attention kernels of one step alone (same shapes, strides and arguments):
    their time is the part of the step no elementwise or optimiser work adds to."""
    recorder = _KernelRecorder()
    with recorder.mode():
        step()
    out = {"gemm_s": 0.0, "attention_s": 0.0, "gemm_flops": 0.0}
    for kind, func, args, kwargs in recorder.calls:
        best = math.inf
        for _ in range(reps):
            a, kw = _materialise(args), _materialise(kwargs)
            t0 = CLOCK()
            func(*a, **kw)
            best = min(best, CLOCK() - t0)
        out[f"{kind}_s"] += best
        if kind == "gemm":
            out["gemm_flops"] += _gemm_flops(func.name(), args)
    return out


def check_same_function(ours: nn.Module, theirs: nn.Module, g: Geometry) -> float:
    """Largest output difference of the two implementations on one small batch (eval mode)."""
    x, t, y, _ = make_batch(Geometry(**{**asdict(g), "batch": 2}), seed=1)
    was = ours.training
    ours.eval()
    with torch.no_grad():
        diff = (call(ours, x, t, y) - call(theirs, x, t, y)).abs().max().item()
    ours.train(was)
    return diff


def bench_geometry(g: Geometry, rounds: int, ablations: bool, compile_: bool) -> dict:
    """Alternate the variants round by round; return medians and per-round ratios."""
    torch.manual_seed(0)
    ours = build_ditlab(g)
    theirs = diffusers_twin(ours)
    diff = check_same_function(ours, theirs, g)
    batch = make_batch(g)
    steps = {"ditlab": TrainStep(ours, batch), "diffusers": TrainStep(theirs.train(), batch)}
    memory = {"ditlab": saved_activation_bytes(ours, batch), "diffusers": saved_activation_bytes(theirs, batch)}
    if ablations:
        ckpt = build_ditlab(g, grad_checkpointing=True)
        steps["ditlab, grad checkpointing"] = TrainStep(ckpt, batch)
        memory["ditlab, grad checkpointing"] = saved_activation_bytes(ckpt, batch)
        naive = build_ditlab(g)
        steps["ditlab, plain attention (no SDPA)"] = TrainStep(naive, batch, plain_attention)
        memory["ditlab, plain attention (no SDPA)"] = saved_activation_bytes(naive, batch, plain_attention)
    if compile_:
        compiled = torch.compile(build_ditlab(g))
        steps["ditlab, torch.compile"] = TrainStep(compiled, batch)
    for step in steps.values():  # warm-up: allocator, AdamW state, compilation
        step()
        step()
    kernels = kernel_breakdown(steps["ditlab"])
    fwd, attn = forward_flops(g)
    train_flops = 3 * fwd * g.batch
    times: dict[str, list[float]] = {name: [] for name in steps}
    roof: list[float] = []
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(steps[name]())
        roof.append(matmul_flops_per_s())
        mid = {k: f"{v[-1]:.3f}s" for k, v in times.items()}
        print(f"  round {r + 1}/{rounds}: {mid}, matmul {roof[-1] / 1e9:.1f} GFLOP/s", flush=True)
    rows = {}
    for name, ts in times.items():
        fractions = [train_flops / t / m for t, m in zip(ts, roof, strict=True)]
        rows[name] = {
            "step_s": statistics.median(ts),
            "samples_per_s": g.batch / statistics.median(ts),
            "roofline": statistics.median(fractions),
            "roofline_without_attention_flops": statistics.median(
                [3 * (fwd - attn) * g.batch / t / m for t, m in zip(ts, roof, strict=True)]),
            "ratio_vs_ditlab": statistics.median([t / o for t, o in zip(ts, times["ditlab"], strict=True)]),
            "saved_activations_mb": memory.get(name, float("nan")) / 2**20,
        }
    kernels["gemm_rate_vs_matmul"] = kernels["gemm_flops"] / kernels["gemm_s"] / statistics.median(roof)
    return {
        "geometry": asdict(g),
        "ditlab_kernels": kernels,
        "same_function_max_abs_diff": diff,
        "forward_gflops_per_sample": fwd / 1e9,
        "attention_share": attn / fwd,
        "matmul_gflops_median": statistics.median(roof) / 1e9,
        "state_mb": {"ditlab": state_bytes(ours) / 2**20, "diffusers": state_bytes(theirs) / 2**20},
        "rows": rows,
    }


def report(result: dict) -> str:
    g = result["geometry"]
    lines = [
        f"{g['label']}: {g['model']} depth {g['depth']} width {g['hidden']} heads {g['heads']} "
        f"tokens {(g['side'] // g['patch']) ** 2} batch {g['batch']}; "
        f"{result['forward_gflops_per_sample']:.2f} GFLOP fwd/sample "
        f"({100 * result['attention_share']:.0f}% attention); "
        f"matmul {result['matmul_gflops_median']:.1f} GFLOP/s; same function: max |diff| "
        f"{result['same_function_max_abs_diff']:.1e}; params+grads+AdamW {result['state_mb']['ditlab']:.0f} MB "
        f"(diffusers {result['state_mb']['diffusers']:.0f} MB)",
        "| variant | step (s) | samples/s | diffusers time / this | roofline | (w/o attn FLOPs) "
        "| saved activations (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ref = result["rows"]["ditlab"]["step_s"]
    for name, r in result["rows"].items():
        speed = result["rows"]["diffusers"]["step_s"] / r["step_s"]
        lines.append(f"| {name} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | {speed:.2f} | "
                     f"{100 * r['roofline']:.0f}% | {100 * r['roofline_without_attention_flops']:.0f}% | "
                     f"{r['saved_activations_mb']:.0f} |")
    speedup = result["rows"]["diffusers"]["ratio_vs_ditlab"]
    lines.append(f"ditlab is {speedup:.2f}x as fast as diffusers (median of same-round time ratios)")
    k = result["ditlab_kernels"]
    other = max(ref - k["gemm_s"] - k["attention_s"], 0.0)
    lines.append(
        f"ditlab step {ref:.3f}s = GEMMs {k['gemm_s']:.3f}s ({100 * k['gemm_s'] / ref:.0f}%, running at "
        f"{100 * k['gemm_rate_vs_matmul']:.0f}% of the square-matmul rate) + attention kernels {k['attention_s']:.3f}s "
        f"({100 * k['attention_s'] / ref:.0f}%) + everything else {other:.3f}s ({100 * other / ref:.0f}%: "
        f"elementwise, norms, GELU, AdamW)")
    g_flops = 3 * result["forward_gflops_per_sample"] * 1e9 * g["batch"]
    ceiling = g_flops / (k["gemm_s"] + k["attention_s"]) / (result["matmul_gflops_median"] * 1e9)
    lines.append(f"kernel ceiling: with everything but GEMMs and attention kernels free, the step would reach "
                 f"{100 * ceiling:.0f}% of the roofline")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["paper", "demo", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ablations", action="store_true", help="add grad-checkpointing and no-SDPA rows")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (slow to compile)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: CPU seconds of this process (default; robust on a shared machine); wall: elapsed")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: 1 with --clock cpu, torch's default with --clock wall)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    set_clock(args.clock)
    threads = args.threads or (1 if args.clock == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32 CPU, {args.clock} clock",
          flush=True)
    results = []
    for g in geometries(args.scale):
        print(f"{g.label} ...", flush=True)
        results.append(bench_geometry(g, args.rounds, args.ablations, args.compile))
        print(report(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

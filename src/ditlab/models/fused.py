"""Fused element-wise steps of the DiT blocks for the GPU, each next to its exact eager definition. OPT-IN.

A DiT block spends its FLOPs in six GEMMs and attention, but in eager mode it also makes about a dozen
passes over the (N, T, D) activations for the steps between them: layer norm, the adaLN affine
``x * (1 + scale) + shift``, the gated residual ``x + gate * y``, bias and GELU. When enabled, and on a
CUDA device, these functions run those steps fused:

- ``modulated_layer_norm`` and ``gated_residual``: small ``torch.compile`` regions (one Triton kernel
  forward and one backward instead of 3-5 each; fp32 arithmetic inside, one rounding to the output
  dtype). They compile once per process (a few seconds, shapes become dynamic after the first change) and
  serve every model size.
- ``linear_gelu`` without gradients (sampling): bias and the tanh GELU in the cuBLASLt GEMM epilogue, so
  the 4D-wide MLP activation is written once instead of three times.
- ``one_qkv_gemm``: GPU sampling projects q, k, v with one GEMM (the CPU's three row-block GEMMs are
  faster there, not necessarily on a GPU).

**Off by default**: none of this has been measured on a GPU yet (docs/performance.md). Turn it on with
``enable()`` (process-wide; the benchmarks do), ``use(True)`` for a block of code, ``ditlab train
--fused_kernels`` or ``DITLAB_FUSED=1`` in the environment. Everywhere else the eager definitions run,
unchanged: when off, on the CPU (CPU numbers, tests and resumes are bit-for-bit the same either way),
and inside a model that ``torch.compile`` traces (it fuses them itself).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _from_env(environ=os.environ) -> bool:
    """The setting at import: on only where ``DITLAB_FUSED`` says 1 (or true, yes, on)."""
    return environ.get("DITLAB_FUSED", "0").strip().lower() in ("1", "true", "yes", "on")


_ENABLED_AT_IMPORT = _ENABLED = _from_env()
_COMPILED: dict[str, Callable] = {}
_FAILED: dict[str, str] = {}


def set_enabled(enabled: bool) -> bool:
    """Turn the fused GPU paths on or off for this process; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def enable() -> None:
    """Use the fused GPU paths from now on (for CUDA tensors; the CPU always runs the eager definitions)."""
    set_enabled(True)


def disable() -> None:
    set_enabled(False)


def is_enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def use(enabled: bool) -> Iterator[None]:
    """The fused paths on (or off) inside the ``with`` block, the previous setting restored after it."""
    previous = set_enabled(enabled)
    try:
        yield
    finally:
        set_enabled(previous)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


def _on_gpu(x: Tensor) -> bool:
    """Enabled, a CUDA tensor, in eager code (a traced model is fused by its compiler)."""
    return _ENABLED and x.is_cuda and not _is_compiling()


def _can_fuse(x: Tensor) -> bool:
    """The compiled (Triton) kernels apply: ``_on_gpu`` and Triton installed."""
    if not _on_gpu(x):
        return False
    from torch.utils._triton import has_triton

    return has_triton()


def one_qkv_gemm(x: Tensor) -> bool:
    """Whether attention without gradients projects q, k, v with one GEMM (enabled, on a GPU)."""
    return _on_gpu(x)


def failures() -> dict[str, str]:
    """The fused kernels that failed to compile or run in this process (name -> error); they run eagerly."""
    return dict(_FAILED)


def _run_compiled(name: str, fn: Callable, *args):
    """``fn`` compiled (once per process) on ``args``. If that fails (no C compiler for Triton's launcher,
    say): a one-line warning, None (the caller runs the eager definition), and eager for ``name`` from then on."""
    if name in _FAILED:
        return None
    compiled = _COMPILED.get(name)
    if compiled is None:
        compiled = _COMPILED[name] = torch.compile(fn, fullgraph=True)
    try:
        return compiled(*args)  # compiles on the first call (and for a new shape: then with dynamic shapes)
    except Exception as err:
        _FAILED[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        warnings.warn(f"ditlab: fused GPU kernel {name} off, it failed ({_FAILED[name]})", stacklevel=3)
        return None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 knows only the GPU flag
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" and torch.is_autocast_enabled() else None
    return torch.get_autocast_dtype(device_type) if on else None


def _out_dtype(x: Tensor, *others: Tensor) -> torch.dtype:
    """The dtype the eager expression would feed to the next GEMM: autocast's, else type promotion."""
    dtype = _autocast_dtype(x.device.type)
    if dtype is not None:
        return dtype
    dtype = x.dtype
    for o in others:
        dtype = torch.promote_types(dtype, o.dtype)
    return dtype


# ----------------------------------------------------------------------------- adaLN modulate + LayerNorm
def modulated_layer_norm_reference(x: Tensor, norm: nn.Module, shift: Tensor, scale: Tensor) -> Tensor:
    """The eager definition: ``norm`` (a LayerNorm without affine weights), then the adaLN affine
    ``x * (1 + scale) + shift`` (the expression of ``layers.modulate``)."""
    return norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _modulated_layer_norm_fp32(x: Tensor, shift: Tensor, scale: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    y = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)  # (N, T, D) fp32
    return (y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)).to(dtype)


def modulated_layer_norm(x: Tensor, norm: nn.Module, shift: Tensor, scale: Tensor) -> Tensor:
    """norm(x) * (1 + scale) + shift with x (N, T, D), shift and scale (N, D); one kernel on CUDA when enabled.

    ``norm`` is the block's ``nn.LayerNorm(elementwise_affine=False)``. Fused, the result comes straight in
    the dtype the following GEMM reads (bf16 under bf16 autocast), computed in fp32 and rounded once;
    eager under autocast computes the same fp32 values and rounds them when the GEMM casts its input.
    """
    affine = getattr(norm, "weight", None) is not None
    if affine or not isinstance(norm, nn.LayerNorm) or not _can_fuse(x):
        return modulated_layer_norm_reference(x, norm, shift, scale)
    out = _run_compiled("modulated_layer_norm", _modulated_layer_norm_fp32,
                        x, shift, scale, float(norm.eps), _out_dtype(x, shift, scale))
    return modulated_layer_norm_reference(x, norm, shift, scale) if out is None else out


# ----------------------------------------------------------------------------- gate + residual
def gated_residual_reference(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """The eager definition: x + gate * y, gate (N, D) per sample, x and y (N, T, D)."""
    return x + gate.unsqueeze(1) * y


def _gated_residual_fp32(x: Tensor, gate: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    return (x.float() + gate.float().unsqueeze(1) * y.float()).to(dtype)


def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate[:, None] * y (the adaLN-Zero residual); one kernel each way on CUDA when enabled."""
    if not _can_fuse(x):
        return gated_residual_reference(x, gate, y)
    dtype = torch.promote_types(x.dtype, torch.promote_types(gate.dtype, y.dtype))
    out = _run_compiled("gated_residual", _gated_residual_fp32, x, gate, y, dtype)
    return gated_residual_reference(x, gate, y) if out is None else out


# ----------------------------------------------------------------------------- bias + GELU in the GEMM
_EPILOGUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def linear_gelu_reference(x: Tensor, linear: nn.Linear, act: nn.Module) -> Tensor:
    """The eager definition: ``act(linear(x))``, act the tanh-approximated GELU (the ViT MLP's first half)."""
    return act(linear(x))


def _epilogue_applies(x: Tensor, linear: nn.Linear, act: nn.Module) -> bool:
    if not (isinstance(act, nn.GELU) and act.approximate == "tanh") or linear.bias is None or not _on_gpu(x):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or linear.weight.requires_grad):
        return False  # training: the GEMM + GELU pair that autograd knows how to differentiate
    return x.numel() > 0 and x.shape[-1] == linear.in_features


def linear_gelu(x: Tensor, linear: nn.Linear, act: nn.Module) -> Tensor:
    """act(linear(x)) for x (..., D_in) -> (..., D_out), ``act`` the tanh GELU.

    Enabled, without gradients, on CUDA: one cuBLASLt GEMM with the bias and the tanh GELU in its epilogue
    (``torch._addmm_activation``); otherwise the eager pair.
    """
    if not _epilogue_applies(x, linear, act):
        return linear_gelu_reference(x, linear, act)
    w, b = linear.weight, linear.bias
    dtype = _out_dtype(x, w)
    if dtype not in _EPILOGUE_DTYPES:
        return linear_gelu_reference(x, linear, act)
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (M, D_in)
    out = torch._addmm_activation(b.to(dtype), x2, w.to(dtype).t(), use_gelu=True)  # (M, D_out)
    return out.view(*x.shape[:-1], out.shape[-1])


# ----------------------------------------------------------------------------- attention kernels
_DEFAULT_SDP_ORDER: list[int] | None = None


def prefer_cudnn_attention(enabled: bool = True) -> bool:
    """Let ``scaled_dot_product_attention`` try cuDNN's fused attention first on the GPU (process-wide).

    cuDNN's kernel is built for Hopper, where flash attention pads head dim 72 (DiT-XL) to 96. Where
    cuDNN cannot take an input (a mask it does not support, say), SDPA falls through to the other kernels
    in torch's usual order. Returns False where this torch cannot set the order; ``enabled=False``
    restores torch's default order. Not called by ditlab itself: the benchmarks compare both orders.
    """
    global _DEFAULT_SDP_ORDER
    getter = getattr(torch._C, "_get_sdp_priority_order", None)
    setter = getattr(torch._C, "_set_sdp_priority_order", None)
    from torch.nn.attention import SDPBackend

    if getter is None or setter is None or not hasattr(SDPBackend, "CUDNN_ATTENTION"):
        return False
    if _DEFAULT_SDP_ORDER is None:
        _DEFAULT_SDP_ORDER = list(getter())
    order = list(_DEFAULT_SDP_ORDER)
    if enabled:
        cudnn = int(SDPBackend.CUDNN_ATTENTION)
        order = [cudnn, *(b for b in order if b != cudnn)]
        torch.backends.cuda.enable_cudnn_sdp(True)
    setter(order)
    return True

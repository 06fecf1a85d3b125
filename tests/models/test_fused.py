"""models/fused.py: off by default; on the CPU the eager expressions run bit for bit whether it is on or off;
the fused code paths (forced here, with their kernels run eagerly) compute their eager definitions."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from ditlab.models import create_model, fused
from ditlab.models.layers import modulate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BLOCKS = ["adaLN-Zero", "adaLN", "cross-attention", "in-context"]


@pytest.fixture(autouse=True)
def _fused_off_after():
    before = fused.is_enabled()
    yield
    fused.set_enabled(before)


def _tensors(n=3, t=5, d=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(n, t, d, generator=g).to(device, dtype) for _ in range(2))
    shift, scale, gate = (0.5 * torch.randn(n, d, generator=g).to(device, dtype) for _ in range(3))
    return x, y, shift, scale, gate


def _model(block, randomize):
    kw = {"context_dim": 8, "num_classes": 0} if block == "cross-attention" else {"num_classes": 10}
    return randomize(create_model("DiT-Test/2", input_size=8, depth=2, block=block, **kw))


def _inputs(block):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.rand(3, generator=g) * 999
    if block == "cross-attention":
        return x, t, {"context": torch.randn(3, 5, 8, generator=g), "context_mask": torch.ones(3, 5, dtype=torch.bool)}
    return x, t, {"y": torch.tensor([1, 4, 10])}


def _forward_backward(model, x, t, cond):
    model.zero_grad(set_to_none=True)
    out = model(x, t, **cond)
    out.square().mean().backward()
    with torch.no_grad():
        sampled = model(x, t, **cond)
    return out.detach(), sampled, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_off_by_default_and_switches():
    assert fused._from_env({}) is False and fused._from_env({"DITLAB_FUSED": "0"}) is False
    assert fused._from_env({"DITLAB_FUSED": "1"}) is True and fused._from_env({"DITLAB_FUSED": " On"}) is True
    if "DITLAB_FUSED" not in os.environ:
        assert fused._ENABLED_AT_IMPORT is False
    fused.disable()
    with fused.use(True):
        assert fused.is_enabled()
        with fused.use(False):
            assert not fused.is_enabled()
        assert fused.is_enabled()
    assert not fused.is_enabled()
    fused.enable()
    assert fused.is_enabled() and fused.set_enabled(False) is True and not fused.is_enabled()


@pytest.mark.parametrize("block", BLOCKS)
def test_cpu_numbers_are_bit_identical_with_fused_on_or_off(block, randomize):
    model = _model(block, randomize)
    x, t, cond = _inputs(block)
    fused.disable()
    want = _forward_backward(model, x, t, cond)
    fused.enable()
    got = _forward_backward(model, x, t, cond)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        assert torch.equal(got[2][name], want[2][name]), name


def test_cpu_paths_are_the_eager_expressions_bit_for_bit():
    x, y, shift, scale, gate = _tensors()
    norm = torch.nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)
    fc1, act = torch.nn.Linear(16, 64), torch.nn.GELU(approximate="tanh")
    for on in (False, True):
        fused.set_enabled(on)
        assert torch.equal(fused.modulated_layer_norm(x, norm, shift, scale), modulate(norm(x), shift, scale))
        assert torch.equal(fused.gated_residual(x, gate, y), x + gate.unsqueeze(1) * y)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                assert torch.equal(fused.linear_gelu(x, fc1, act), act(fc1(x)))
        assert not fused.one_qkv_gemm(x)


def _force_fused_paths(monkeypatch):
    """The GPU branches taken on the CPU: the compiled regions run eagerly, and the GEMM epilogue (tanh GELU
    in cuBLASLt; torch's CPU kernel applies the erf GELU) by a stand-in with the CUDA kernel's definition."""
    monkeypatch.setattr(fused, "_on_gpu", lambda x: fused.is_enabled())
    monkeypatch.setattr(fused, "_can_fuse", lambda x: fused.is_enabled())
    monkeypatch.setattr(fused, "_run_compiled", lambda name, fn, *args: fn(*args))
    calls = []

    def addmm_gelu(bias, x, wt, use_gelu):
        calls.append(x.shape)
        return F.gelu(torch.addmm(bias, x, wt), approximate="tanh")

    monkeypatch.setattr(fused.torch, "_addmm_activation", addmm_gelu)
    return calls


@pytest.mark.parametrize("block", ["adaLN-Zero", "adaLN"])
def test_fused_paths_compute_the_model_the_eager_paths_compute(block, randomize, monkeypatch):
    model = _model(block, randomize)
    x, t, cond = _inputs(block)
    fused.disable()
    want = _forward_backward(model, x, t, cond)
    calls = _force_fused_paths(monkeypatch)
    fused.enable()
    got = _forward_backward(model, x, t, cond)
    assert len(calls) == 2  # the epilogue served each block's MLP when sampling, never in training
    # training: layer norm, modulate and residual in fp32 are the same operations: identical
    assert torch.equal(got[0], want[0])
    for name in want[2]:
        assert torch.equal(got[2][name], want[2][name]), name
    # sampling: one qkv GEMM and addmm instead of linear: the same values up to summation order
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_fp32_kernels_compute_the_definitions():
    """The functions compiled for the GPU, run eagerly here: fp32 math, one rounding to the output dtype."""
    x, y, shift, scale, gate = _tensors(dtype=torch.float64)
    norm = torch.nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)
    want = fused.modulated_layer_norm_reference(x, norm, shift, scale)
    got = fused._modulated_layer_norm_fp32(x.bfloat16(), shift.bfloat16(), scale.bfloat16(), 1e-6, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    # inputs rounded to bf16 (rel 4e-3) then one rounding of the result
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)
    got = fused._gated_residual_fp32(x.float(), gate.float(), y.float(), torch.float32)
    torch.testing.assert_close(got.double(), fused.gated_residual_reference(x, gate, y), rtol=1e-6, atol=1e-6)


def test_fused_paths_stay_off_on_cpu_and_inside_compile(monkeypatch):
    x = torch.zeros(1, 2, 4)
    fused.enable()
    assert not fused._can_fuse(x) and not fused._on_gpu(x)
    monkeypatch.setattr(fused, "_is_compiling", lambda: True)
    assert not fused._on_gpu(x.to("meta"))


def test_a_kernel_that_fails_to_compile_warns_once_and_runs_eagerly(monkeypatch):
    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.setattr(fused, "_FAILED", {})
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no C compiler\nmore")

    monkeypatch.setattr(fused.torch, "compile", lambda fn, **kw: broken)
    with pytest.warns(UserWarning, match="gated_residual off, it failed .RuntimeError: no C compiler"):
        assert fused._run_compiled("gated_residual", fused._gated_residual_fp32) is None
    assert fused._run_compiled("gated_residual", fused._gated_residual_fp32) is None and calls == [1]
    assert fused.failures() == {"gated_residual": "RuntimeError: no C compiler"}
    x, y, _, _, gate = _tensors()
    monkeypatch.setattr(fused, "_can_fuse", lambda x: True)
    assert torch.equal(fused.gated_residual(x, gate, y), fused.gated_residual_reference(x, gate, y))


def test_out_dtype_follows_autocast_then_promotion():
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    assert fused._out_dtype(x, torch.zeros(2, dtype=torch.float32)) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused._out_dtype(torch.zeros(2), torch.zeros(2)) == torch.bfloat16


def test_prefer_cudnn_attention_puts_cudnn_first_and_restores():
    from torch.nn.attention import SDPBackend

    get = getattr(torch._C, "_get_sdp_priority_order", None)
    if get is None:
        pytest.skip("this torch cannot order SDPA backends")
    before = list(get())
    try:
        assert fused.prefer_cudnn_attention(True)
        assert get()[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert sorted(get()) == sorted(before)
    finally:
        fused.prefer_cudnn_attention(False)
    assert list(get()) == before


@pytest.mark.slow
def test_compiled_kernels_match_eager_forward_and_backward_on_cpu():
    """The compiled regions (here through the CPU backend) give the eager values and gradients."""
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    x, y, shift, scale, gate = _tensors(dtype=torch.float32)
    norm = torch.nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)
    inputs = [t.clone().requires_grad_() for t in (x, shift, scale, gate, y)]
    refs = [t.clone().requires_grad_() for t in (x, shift, scale, gate, y)]
    mln = torch.compile(fused._modulated_layer_norm_fp32, fullgraph=True)
    gres = torch.compile(fused._gated_residual_fp32, fullgraph=True)
    a = gres(inputs[0], inputs[3], mln(inputs[0], inputs[1], inputs[2], 1e-6, torch.float32), torch.float32)
    b = fused.gated_residual_reference(refs[0], refs[3], fused.modulated_layer_norm_reference(
        refs[0], norm, refs[1], refs[2]))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    (a * b.detach()).sum().backward()
    (b * b.detach()).sum().backward()
    for got, want in zip(inputs, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- on a GPU
def _grads(model, x, t, y, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = model(x, t, y).float()
    out.square().mean().backward()
    return out.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_model_matches_eager_on_cuda(dtype, randomize):
    torch.manual_seed(0)
    model = randomize(create_model("DiT-S/2", input_size=16, num_classes=10, depth=3)).cuda()
    x = torch.randn(4, 4, 16, 16, device="cuda")
    t = torch.rand(4, device="cuda") * 999
    y = torch.randint(0, 10, (4,), device="cuda")
    fused.disable()
    out0, g0 = _grads(model, x, t, y, dtype)
    fused.enable()
    out1, g1 = _grads(model, x, t, y, dtype)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.isfinite(out1).all()
    assert ((out1 - out0).norm() / out0.norm()).item() < tol
    for n in g0:
        rel = ((g1[n] - g0[n]).norm() / g0[n].norm().clamp_min(1e-12)).item()
        assert rel < 5 * tol, (n, rel)
    with torch.no_grad():  # sampling: the GEMM epilogue and the single qkv GEMM
        fused.disable()
        s0 = model(x, t, y).float()
        fused.enable()
        s1 = model(x, t, y).float()
    assert ((s1 - s0).norm() / s0.norm()).item() < tol


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gelu_epilogue_is_the_tanh_gelu(dtype):
    torch.manual_seed(0)
    fc1 = torch.nn.Linear(96, 384).cuda().to(dtype)
    x = torch.randn(2, 50, 96, device="cuda", dtype=dtype)
    fused.enable()
    with torch.no_grad():
        got = fused.linear_gelu(x, fc1, torch.nn.GELU(approximate="tanh"))
        want = F.gelu(F.linear(x.double(), fc1.weight.double(), fc1.bias.double()), approximate="tanh")
        exact = F.gelu(F.linear(x.double(), fc1.weight.double(), fc1.bias.double()))
    err = ((got.double() - want).norm() / want.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 1e-2)
    if dtype == torch.float32:  # and not the erf GELU (they differ by ~1e-3 here)
        assert err < 0.1 * ((exact - want).norm() / want.norm()).item()


@cuda
def test_cudnn_attention_matches_flash_for_dit_heads():
    q, k, v = (torch.randn(2, 16, 256, 72, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    fused.prefer_cudnn_attention(True)
    try:
        got = F.scaled_dot_product_attention(q, k, v)
    finally:
        fused.prefer_cudnn_attention(False)
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2

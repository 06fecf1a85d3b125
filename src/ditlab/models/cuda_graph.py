"""CUDA graphs for fixed-shape work: a training step's forward + backward, and a network's forward.

A small model (the MNIST demo's DiT: 4 blocks, 1,024 tokens per batch) runs each of its ~400 kernels in a
few microseconds, and launching them from Python takes longer than running them: the GPU waits on the
CPU. A CUDA graph records the kernels once and replays them with one launch. Both wrappers here copy
new inputs into the recorded (static) input tensors, replay, and hand back results; they record one
graph per input signature (shapes, dtypes) and run eagerly wherever graphs cannot help (on the CPU).

The replayed kernels are the recorded ones, so a replay computes exactly what the eager call computes.
Code inside must not synchronise with the host (``.item()``, a blocking copy) or depend on tensor values
in Python; randomness from torch's CUDA generator is fine (each replay draws new numbers). Work that
cannot be recorded warns once and runs eagerly from then on.

**Opt-in** (not measured on a GPU yet, docs/performance.md): ``ditlab train --cuda_graphs`` (the training
step and the autoencoder's), ``Pipeline.cuda_graphs = True`` (sampling); nothing uses them by default.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor


def _signature(inputs: Mapping[str, Any]) -> tuple:
    """What a recorded graph is valid for: tensor shapes, dtypes, devices, and other values as they are."""
    sig = []
    for key in sorted(inputs):
        v = inputs[key]
        sig.append((key, (tuple(v.shape), v.dtype, v.device, v.requires_grad) if isinstance(v, Tensor) else v))
    return tuple(sig)


def _warm_up(fn: Callable[[], Any], iterations: int) -> None:
    """Run ``fn`` on a side stream (as torch.cuda.graph's documentation asks) so lazy initialisation,
    autotuning and compilation happen before recording."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iterations):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def _try_record(owner, record: Callable[[], None]) -> bool:
    """Run ``record``; if the work cannot be recorded as a graph, say so once and run eagerly from then on."""
    try:
        record()
        return True
    except Exception as err:
        owner.failed = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        warnings.warn(f"ditlab: running without CUDA graphs, recording failed ({owner.failed})", stacklevel=3)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return False


def _clone(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    return out


class GraphedStep:
    """``step(**inputs)``: zero the gradients, compute ``loss_fn(**inputs)`` and back-propagate it, as one
    CUDA graph replay; returns the loss (or the tuple ``loss_fn`` returned, first element the loss), detached.

    Afterwards every parameter's ``.grad`` holds what ``zero_grad(); loss.backward()`` leaves there. The
    gradient tensors are the graph's own: keep them (no ``zero_grad(set_to_none=True)`` between steps);
    the optimiser step, clipping and EMA stay outside, so a step whose loss is not finite can still be
    skipped. Inputs of another signature than the recorded one (a short batch) run eagerly, with the same
    result. On the CPU every call is eager.

    Args:
        loss_fn: keyword tensors in (other values are part of the signature, passed as they are), a scalar
            loss (or a tuple whose first element is the loss) out.
        params: the parameters whose gradients the step produces.
        warmup: eager iterations before recording (compilation and autotuning happen there).
    """

    def __init__(self, loss_fn: Callable[..., Any], params: Iterable[torch.nn.Parameter], warmup: int = 3):
        self.loss_fn = loss_fn
        self.params = [p for p in params if p.requires_grad]
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._signature: tuple | None = None
        self._inputs: dict[str, Any] = {}
        self._out: Any = None
        self._grads: list[Tensor] = []
        self.replays = 0
        self.failed: str | None = None  # why recording failed; then every call runs eagerly

    def _body(self, inputs: Mapping[str, Any]) -> Any:
        for p in self.params:  # backward then allocates fresh gradients (inside a capture: the graph's own)
            p.grad = None
        out = self.loss_fn(**inputs)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        loss.backward()
        if isinstance(out, (tuple, list)):
            return type(out)(o.detach() for o in out)
        return out.detach()

    def __call__(self, **inputs: Any) -> Any:
        first = next((v for v in inputs.values() if isinstance(v, Tensor)), None)
        if first is None or not first.is_cuda or self.failed:
            return self._body(inputs)
        sig = _signature(inputs)
        if self.graph is None:
            if not _try_record(self, lambda: self._record(inputs, sig)):
                for p in self.params:
                    p.grad = None
                return self._body(inputs)
        elif sig != self._signature:
            return self._body(inputs)  # eager: a shape the graph was not recorded for
        for key, value in inputs.items():
            if isinstance(value, Tensor):
                self._inputs[key].copy_(value)
        self.graph.replay()
        self.replays += 1
        for p, g in zip(self.params, self._grads, strict=True):
            p.grad = g  # a caller may have replaced them; the graph writes these tensors
        return _clone(self._out)

    def _record(self, inputs: Mapping[str, Any], sig: tuple) -> None:
        self._inputs = {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in inputs.items()}
        _warm_up(lambda: self._body(self._inputs), self.warmup)
        for p in self.params:
            p.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # hand the warm-up's activations back before the graph takes its own
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._out = self._body(self._inputs)
        self._grads = [p.grad for p in self.params]
        self.graph, self._signature = graph, sig


class GraphedForward:
    """``fn(**inputs)`` replayed from a CUDA graph, one graph per input signature (at most ``max_graphs``).

    For inference (no gradients): the sampler's network evaluation, whose shapes are fixed for a whole
    sampling run. Returns a copy of the output, so results stay valid across calls. CPU inputs, a call
    that records gradients, and signatures beyond ``max_graphs`` run ``fn`` eagerly.
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = 2, max_graphs: int = 4):
        self.fn = fn
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, Tensor], Any]] = {}
        self._pool = None
        self.replays = 0
        self.failed: str | None = None

    def __call__(self, **inputs: Any) -> Any:
        tensors = [v for v in inputs.values() if isinstance(v, Tensor)]
        if not tensors or not tensors[0].is_cuda or torch.is_grad_enabled():
            return self.fn(**inputs)
        sig = _signature(inputs)
        entry = self._graphs.get(sig)
        if entry is None:
            if len(self._graphs) >= self.max_graphs or self.failed:
                return self.fn(**inputs)
            recorded = []
            if not _try_record(self, lambda: recorded.append(self._record(inputs))):
                return self.fn(**inputs)
            entry = self._graphs[sig] = recorded[0]
        graph, static, out = entry
        for key, value in inputs.items():
            if isinstance(value, Tensor):
                static[key].copy_(value)
        graph.replay()
        self.replays += 1
        return _clone(out)

    def _record(self, inputs: Mapping[str, Any]):
        static = {k: v.clone() if isinstance(v, Tensor) else v for k, v in inputs.items()}
        _warm_up(lambda: self.fn(**static), self.warmup)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # graphs of one wrapper replay one at a time
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self.fn(**static)
        return graph, static, out

"""models/cuda_graph.py: a graphed step leaves the gradients of zero_grad + backward; a graphed forward its output."""
from __future__ import annotations

import pytest
import torch

from ditlab.diffusion import create_process
from ditlab.models import create_model
from ditlab.models.cuda_graph import GraphedForward, GraphedStep

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _setup(device, randomize, learn_sigma=True):
    torch.manual_seed(0)
    model = randomize(create_model("DiT-Test/2", input_size=8, num_classes=10, learn_sigma=learn_sigma)).to(device)
    process = create_process("ddpm", learn_sigma=learn_sigma)
    g = torch.Generator().manual_seed(1)
    batches = [dict(x0=torch.randn(4, 4, 8, 8, generator=g), t=torch.randint(0, 1000, (4,), generator=g),
                    noise=torch.randn(4, 4, 8, 8, generator=g), y=torch.randint(0, 10, (4,), generator=g))
               for _ in range(6)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def loss_fn(x0, t, noise, y):
        return process.training_loss(model, x0, {"y": y}, t=t, noise=noise).mean()

    return model, loss_fn, batches


def _train(model, step, batches):
    """A few AdamW steps; returns the losses and the final weights."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for b in batches:
        losses.append(step(b).item())
        opt.step()
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def _eager_step(model, loss_fn):
    def step(b):
        loss = loss_fn(**b)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()
    return step


def test_on_cpu_a_graphed_step_is_the_eager_step(randomize):
    model, loss_fn, batches = _setup("cpu", randomize)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    want_losses, want = _train(model, _eager_step(model, loss_fn), batches)
    model.load_state_dict(state)
    graphed = GraphedStep(loss_fn, model.parameters())
    got_losses, got = _train(model, lambda b: graphed(**b), batches)
    assert got_losses == want_losses
    for n in want:
        assert torch.equal(got[n], want[n]), n
    assert graphed.graph is None and graphed.replays == 0


def test_graphed_step_returns_every_output_of_a_tuple(randomize):
    model, loss_fn, batches = _setup("cpu", randomize)
    step = GraphedStep(lambda **b: (loss_fn(**b), torch.tensor(7.0)), model.parameters())
    loss, extra = step(**batches[0])
    assert loss.ndim == 0 and not loss.requires_grad and extra.item() == 7.0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_graphed_step_passes_values_that_are_not_tensors():
    w = torch.nn.Parameter(torch.ones(3))
    step = GraphedStep(lambda x, scale, mask: (w * x * scale).sum() if mask is None else w.sum(), [w])
    loss = step(x=torch.arange(3.0), scale=2.0, mask=None)
    assert loss.item() == 6.0 and torch.equal(w.grad, torch.tensor([0.0, 2.0, 4.0]))
    assert GraphedStep(lambda: w.sum(), [w])().item() == 3.0  # no tensors at all: eager


def test_graphed_forward_on_cpu_calls_through():
    calls = []
    fwd = GraphedForward(lambda x: calls.append(1) or x * 2)
    assert torch.equal(fwd(x=torch.ones(3)), torch.full((3,), 2.0))
    assert calls == [1] and fwd.replays == 0


def test_a_step_that_cannot_be_recorded_warns_once_and_runs_eagerly():
    from ditlab.models.cuda_graph import _try_record

    owner = GraphedForward(lambda x: x)

    def record():
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    with pytest.warns(UserWarning, match="without CUDA graphs.*not permitted when stream is capturing"):
        assert not _try_record(owner, record)
    assert owner.failed.startswith("RuntimeError: operation not permitted")
    assert _try_record(owner, lambda: None)


@cuda
def test_graphed_training_matches_eager_on_cuda(randomize):
    model, loss_fn, batches = _setup("cuda", randomize)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    want_losses, want = _train(model, _eager_step(model, loss_fn), batches)
    model.load_state_dict(state)
    graphed = GraphedStep(loss_fn, model.parameters())
    got_losses, got = _train(model, lambda b: graphed(**b), batches)
    assert graphed.replays == len(batches)
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=1e-5, atol=1e-6)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5, msg=n)


@cuda
def test_graphed_step_runs_other_shapes_eagerly(randomize):
    model, loss_fn, batches = _setup("cuda", randomize)
    graphed = GraphedStep(loss_fn, model.parameters())
    graphed(**batches[0])
    short = {k: v[:3] for k, v in batches[1].items()}
    loss = graphed(**short)
    want = loss_fn(**short)
    torch.testing.assert_close(loss, want.detach())
    assert graphed.replays == 1  # the short batch did not replay the graph
    graphed(**batches[2])
    assert graphed.replays == 2 and all(p.grad is g for p, g in zip(graphed.params, graphed._grads, strict=True))


@cuda
def test_graphed_forward_matches_eager_on_cuda(randomize):
    model, _, batches = _setup("cuda", randomize)
    model.eval()
    fwd = GraphedForward(lambda x, t, y: model(x, t, y))
    with torch.no_grad():
        for b in batches[:3]:
            got = fwd(x=b["x0"], t=b["t"].float(), y=b["y"])
            torch.testing.assert_close(got, model(b["x0"], b["t"].float(), b["y"]), rtol=1e-5, atol=1e-6)
        fwd(x=batches[0]["x0"][:2], t=batches[0]["t"][:2].float(), y=batches[0]["y"][:2])  # a second signature
    assert fwd.replays == 4 and len(fwd._graphs) == 2

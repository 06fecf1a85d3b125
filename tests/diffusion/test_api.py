"""The public API: create_process round-trips, loss shapes and values, sampling, errors."""
from __future__ import annotations

import pytest
import torch

from ditlab.diffusion import PROCESSES, Process, create_process, per_sample_generators, per_sample_noise
from ditlab.errors import ProcessError


def toy_model(learn_sigma: bool):
    """A deterministic linear 'network' that records the times it sees."""
    seen = []

    def model(x, t, y=None):
        seen.append(t.clone())
        scale = 0.1 if y is None else (0.1 + 0.01 * y.float()).reshape(-1, *([1] * (x.dim() - 1)))
        out = scale * x
        return torch.cat([out, torch.zeros_like(out)], 1) if learn_sigma else out

    model.seen = seen
    return model


@pytest.mark.parametrize(
    "kind,options",
    [
        ("ddpm", {}),
        ("ddpm", {"schedule": "cosine", "num_timesteps": 100, "prediction": "v", "learn_sigma": False}),
        ("flow", {}),
        ("flow", {"time_sampling": "mode", "shift": 3.0}),
    ],
)
def test_round_trip_and_attributes(kind, options):
    p = create_process(kind, **options)
    d = p.to_dict()
    assert d["kind"] == kind and p.kind == kind
    q = create_process(**d)
    assert q.to_dict() == d
    assert p.default_sampler in p.samplers and p.samplers[0] == p.default_sampler
    assert isinstance(p, Process)  # the protocol's attributes and methods are all there
    assert p.learn_sigma == (kind == "ddpm" and options.get("learn_sigma", True))
    assert set(PROCESSES) == {"ddpm", "flow"}


def test_ddpm_training_loss_matches_hand_computation():
    p = create_process("ddpm", learn_sigma=False)
    x0 = torch.randn(4, 3, 4, 4)
    t = torch.tensor([0, 10, 500, 999])
    noise = torch.randn_like(x0)
    model = toy_model(False)
    loss = p.training_loss(model, x0, None, t=t, noise=noise)
    ab = p.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    want = ((noise - 0.1 * x_t) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, want)
    assert torch.equal(model.seen[0], t.float())


def test_training_loss_uses_global_rng():
    for kind in ("ddpm", "flow"):
        p = create_process(kind)
        x0 = torch.randn(5, 2, 4, 4)
        model = toy_model(p.learn_sigma)
        torch.manual_seed(3)
        a = p.training_loss(model, x0, {})
        torch.manual_seed(3)
        b = p.training_loss(model, x0, {})
        assert a.shape == (5,) and torch.equal(a, b)


def test_flow_training_loss_matches_hand_computation():
    p = create_process("flow", time_sampling="uniform")
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.0, 0.3, 1.0])
    model = toy_model(False)
    loss = p.training_loss(model, x0, {}, t=t, noise=noise)
    tt = t.reshape(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * noise
    torch.testing.assert_close(loss, ((0.1 * x_t - (noise - x0)) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_every_sampler_runs_with_callback_and_original_times(kind):
    p = create_process(kind)
    for sampler in p.samplers:
        model = toy_model(p.learn_sigma)
        calls = []
        x = p.sample(model, torch.randn(2, 3, 4, 4), sampler=sampler, steps=5,
                     callback=lambda i, n, x, x0_hat, calls=calls: calls.append((i, n)))
        assert x.shape == (2, 3, 4, 4) and torch.isfinite(x).all()
        assert calls == [(i, 5) for i in range(5)]
        ts = torch.cat(model.seen)
        if kind == "ddpm":
            assert torch.equal(ts, ts.round()) and ts.max() == 999 and ts.min() >= 0
        else:
            assert ts.max() == 1.0 and ts.min() >= 0.0


def test_per_sample_results_do_not_depend_on_batch():
    p = create_process("ddpm")
    model = toy_model(True)
    seeds = [11, 12, 13]
    gens = per_sample_generators(seeds)
    full = p.sample(model, per_sample_noise((2, 4, 4), gens), sampler="ddpm", steps=10, generators=gens)
    gens1 = per_sample_generators(seeds[1:2])
    one = p.sample(model, per_sample_noise((2, 4, 4), gens1), sampler="ddpm", steps=10, generators=gens1)
    torch.testing.assert_close(full[1:2], one)
    noise = per_sample_noise((2, 4, 4), [5, 6])
    torch.testing.assert_close(noise[1], per_sample_noise((2, 4, 4), [6])[0])


def test_bad_input_raises_process_error():
    with pytest.raises(ProcessError, match="ddpm, flow"):
        create_process("score")
    with pytest.raises(ProcessError, match="linear"):
        create_process("ddpm", schedule="quadratic")
    with pytest.raises(ProcessError, match="valid options"):
        create_process("flow", learn_sigma=True)
    p = create_process("ddpm")
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ProcessError, match="ddpm, ddim, dpmpp_2m, euler, heun, euler_maruyama"):
        p.sample(toy_model(True), x, sampler="lms")
    with pytest.raises(ProcessError, match="'ddpm' cannot run the flow process; choose one of euler, heun"):
        create_process("flow").sample(toy_model(False), x, sampler="ddpm")
    for steps in (0, 1001):
        with pytest.raises(ProcessError, match="steps"):
            p.sample(toy_model(True), x, steps=steps)
    with pytest.raises(ProcessError, match="cfg_scale"):
        p.sample(toy_model(True), x, cfg_scale=-1.0, uncond_model_kwargs={})
    with pytest.raises(ProcessError, match="uncond_model_kwargs"):
        p.sample(toy_model(True), x, cfg_scale=4.0)
    for interval in ((0.5, 0.2), (-0.1, 0.5), (0.0, 1.5)):
        with pytest.raises(ProcessError, match="guidance_interval"):
            p.sample(toy_model(True), x, cfg_scale=2.0, uncond_model_kwargs={}, guidance_interval=interval)
    with pytest.raises(ProcessError, match="output channels"):
        p.sample(toy_model(False), x, steps=2)
    with pytest.raises(ProcessError, match="output channels"):
        create_process("flow").training_loss(toy_model(True), x, {})


def test_network_time_is_float32_for_low_precision_data():
    """bf16 cannot hold step 999 exactly (it rounds to 1000); the network's t stays float32."""
    for kind in ("ddpm", "flow"):
        p = create_process(kind)
        model = toy_model(p.learn_sigma)
        x0 = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
        t = torch.tensor([999, 3]) if kind == "ddpm" else torch.tensor([0.123456, 0.5])
        loss = p.training_loss(model, x0, None, t=t, noise=torch.randn_like(x0))
        assert loss.shape == (2,) and loss.dtype == torch.float32 and model.seen[0].dtype == torch.float32
        torch.testing.assert_close(model.seen[0], t.float(), rtol=0, atol=0)
        p.sample(model, torch.randn(2, 3, 4, 4).to(torch.bfloat16), steps=3)
        assert all(s.dtype == torch.float32 for s in model.seen)

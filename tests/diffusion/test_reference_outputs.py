"""The samplers that existed before the unified sampler space give the numbers they gave then.

``data/reference_samples.json`` was recorded by running this file as a script with the code of
commit 594734e (before the samplers were rewritten against the Process protocol): a fixed random
network shaped like a DiT (``TinyNet``), fixed seeds, every old sampler x process pair, float32 and
float64. Do not re-record it unless a change of numbers is intended and explained.

The test allows 1e-6 relative (the float64 cases agree far closer); on the machine that recorded it
the outputs were also bit-identical (docs/samplers.md says which).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ditlab.diffusion import create_process, per_sample_generators, per_sample_noise

FIXTURE = Path(__file__).parent / "data" / "reference_samples.json"
SHAPE = (2, 4, 4)  # (C, H, W) of each sample
SEEDS = [3, 14]
NUM_CLASSES = 3


class TinyNet(torch.nn.Module):
    """A fixed random network ``model(x, t, y)``: the exact denoiser of N(0, I) data plus a small random
    conv net of x, t and the label, so guidance and every parameterisation have something to act on."""

    def __init__(self, process, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        c = SHAPE[0]
        self.process = process
        self.w1 = torch.randn(8, c, 3, 3, generator=g, dtype=torch.float64).to(dtype) * 0.3
        c_out = c * (2 if process.learn_sigma else 1)
        self.w2 = torch.randn(c_out, 8, 3, 3, generator=g, dtype=torch.float64).to(dtype)
        self.freq = torch.randn(4, generator=g, dtype=torch.float64).to(dtype) * 3.0
        self.label = torch.randn(NUM_CLASSES + 1, 8, generator=g, dtype=torch.float64).to(dtype) * 0.5

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.process.kind == "flow":
            return 1.0 - t, t
        ab = self.process.alphas_cumprod[t.round().long()].to(t.dtype)
        return ab.sqrt(), (1.0 - ab).sqrt()

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = t.to(x.dtype)
        a, s = (v.reshape(-1, 1, 1, 1) for v in self.alpha_sigma(t))
        # N(0, I) data: E[x0 | x] = a x / (a^2 + s^2), E[eps | x] = s x / (a^2 + s^2).
        x0, eps = a * x / (a * a + s * s), s * x / (a * a + s * s)
        tau = t / self.process.num_timesteps if self.process.kind == "ddpm" else t
        emb = torch.cat([torch.sin(tau[:, None] * self.freq), torch.cos(tau[:, None] * self.freq)], 1)  # (N, 8)
        if y is not None:
            emb = emb + self.label[y]
        h = F.silu(F.conv2d(x, self.w1, padding=1) + emb[:, :, None, None])  # (N, 8, H, W)
        extra = 0.1 * torch.tanh(F.conv2d(h, self.w2, padding=1))  # (N, C or 2C, H, W)
        c = x.shape[1]
        if self.process.kind == "flow":
            base = eps - x0
        else:
            base = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.process.prediction]
        out = base + extra[:, :c]
        if self.process.learn_sigma:
            out = torch.cat([out, torch.tanh(10 * extra[:, c:])], 1)  # variance values in [-1, 1]
        return out


# name: (process options, sample() options); "cfg" means cfg_scale with labels [0, 2] and the null label.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ddpm_learned_cfg": ({"kind": "ddpm"}, {"sampler": "ddpm", "steps": 25, "cfg": 4.0}),
    "ddpm_fixed_ddim10": ({"kind": "ddpm", "learn_sigma": False}, {"sampler": "ddpm", "steps": "ddim10"}),
    "ddpm_learned_channels1": ({"kind": "ddpm"}, {"sampler": "ddpm", "steps": 8, "cfg": 1.5, "guidance_channels": 1}),
    "ddim_eta0_cfg": ({"kind": "ddpm"}, {"sampler": "ddim", "steps": 10, "cfg": 1.5}),
    "ddim_eta05": ({"kind": "ddpm", "learn_sigma": False}, {"sampler": "ddim", "steps": 10, "eta": 0.5}),
    "ddim_x0_cosine": ({"kind": "ddpm", "prediction": "x0", "schedule": "cosine"}, {"sampler": "ddim", "steps": 6}),
    "dpmpp_2m_cfg": ({"kind": "ddpm"}, {"sampler": "dpmpp_2m", "steps": 10, "cfg": 4.0}),
    "dpmpp_2m_v_cosine": ({"kind": "ddpm", "prediction": "v", "schedule": "cosine", "learn_sigma": False},
                          {"sampler": "dpmpp_2m", "steps": 8}),
    "dpmpp_2m_interval": ({"kind": "ddpm", "schedule": "scaled_linear"},
                          {"sampler": "dpmpp_2m", "steps": "logsnr7", "cfg": 3.0, "guidance_interval": (0.2, 0.8)}),
    "flow_demo": ({"kind": "flow"}, {"sampler": "euler", "steps": 25, "cfg": 1.5}),
    "flow_euler_shift": ({"kind": "flow", "shift": 3.0}, {"sampler": "euler", "steps": 7}),
    "flow_heun_shift": ({"kind": "flow", "shift": 3.0}, {"sampler": "heun", "steps": 8, "cfg": 2.0}),
    "flow_em": ({"kind": "flow"}, {"sampler": "euler_maruyama", "steps": 10}),
    "flow_em_scale": ({"kind": "flow", "shift": 2.0}, {"sampler": "euler_maruyama", "steps": 12, "noise_scale": 0.5,
                                                      "cfg": 1.5}),
}


def run_case(name: str, dtype: torch.dtype) -> torch.Tensor:
    """The samples (2, C, H, W) of one case."""
    process_options, options = CASES[name]
    process = create_process(**process_options)
    options = dict(options)
    model = TinyNet(process, dtype)
    gens = per_sample_generators(SEEDS)
    noise = per_sample_noise(SHAPE, gens, dtype=dtype)  # (2, C, H, W)
    y = torch.tensor([0, 2])
    kwargs: dict[str, Any] = {"model_kwargs": {"y": y}}
    if "cfg" in options:
        kwargs.update(cfg_scale=options.pop("cfg"), uncond_model_kwargs={"y": torch.full_like(y, NUM_CLASSES)})
    sampler_options = {k: options.pop(k) for k in ("eta", "noise_scale") if k in options}
    with torch.no_grad():
        return process.sample(model, noise, generators=gens, sampler_options=sampler_options or None,
                              **options, **kwargs)


DTYPES = {"float32": torch.float32, "float64": torch.float64}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_old_samplers_give_the_recorded_outputs(name, dtype):
    want = torch.tensor(json.loads(FIXTURE.read_text())[f"{name}/{dtype}"], dtype=torch.float64)
    got = run_case(name, DTYPES[dtype]).to(torch.float64)
    assert torch.isfinite(got).all()
    # 1e-6 relative to the sample's scale (values near 0 get the same absolute allowance).
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * scale)


def record() -> None:
    """Write the fixture from the current code (see the module docstring before doing this)."""
    out = {}
    for name in CASES:
        for dtype_name, dtype in DTYPES.items():
            x = run_case(name, dtype)
            assert torch.isfinite(x).all() and math.isfinite(float(x.abs().max())), name
            out[f"{name}/{dtype_name}"] = x.to(torch.float64).tolist()
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {len(out)} arrays to {FIXTURE}")


def check_bitwise() -> None:
    """Print, case by case, whether the current code reproduces the fixture bit for bit."""
    fixture = json.loads(FIXTURE.read_text())
    for key, want in fixture.items():
        name, dtype_name = key.split("/")
        got = run_case(name, DTYPES[dtype_name]).to(torch.float64)
        want = torch.tensor(want, dtype=torch.float64)
        rel = float((got - want).abs().max() / want.abs().max())
        print(f"{key:32s} bit-identical={torch.equal(got, want)!s:5s} max rel diff {rel:.2e}")


if __name__ == "__main__":
    commands = {"--record": record, "--check-bitwise": check_bitwise}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: python tests/diffusion/test_reference_outputs.py --record | --check-bitwise")
    commands[sys.argv[1]]()

"""Official DiT layout: an independent functional forward written from the paper, and file handling.

We cannot ship the official (CC-BY-NC) code, so ``paper_forward`` below reads the official
state-dict keys directly and implements DiT from the paper's equations with plain tensor ops.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditlab.cli import main
from ditlab.errors import CheckpointError, ModelError
from ditlab.interop import from_official, read_checkpoint, to_official
from ditlab.models import create_model, load_pretrained

D, HEADS, DEPTH, P, C, K, SIDE = 32, 2, 2, 2, 4, 10, 8  # DiT-Test/2 geometry


def mae_pos_embed(dim: int, grid: int) -> np.ndarray:
    """2-D sin-cos table as in MAE (which DiT uses): (grid*grid, dim), numpy float64."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


def official_random_state_dict(seed: int = 0, learn_sigma: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the official key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    out_ch = 2 * C if learn_sigma else C
    sd = {
        "pos_embed": torch.from_numpy(mae_pos_embed(D, SIDE // P)).float()[None],
        "x_embedder.proj.weight": r(D, C, P, P), "x_embedder.proj.bias": r(D),
        "t_embedder.mlp.0.weight": r(D, 256), "t_embedder.mlp.0.bias": r(D),
        "t_embedder.mlp.2.weight": r(D, D), "t_embedder.mlp.2.bias": r(D),
        "y_embedder.embedding_table.weight": r(K + 1, D),
        "final_layer.linear.weight": r(P * P * out_ch, D), "final_layer.linear.bias": r(P * P * out_ch),
        "final_layer.adaLN_modulation.1.weight": r(2 * D, D), "final_layer.adaLN_modulation.1.bias": r(2 * D),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({
            b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
            b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
            b + "mlp.fc1.weight": r(4 * D, D), b + "mlp.fc1.bias": r(4 * D),
            b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D),
            b + "adaLN_modulation.1.weight": r(6 * D, D), b + "adaLN_modulation.1.bias": r(6 * D),
        })
    return sd


def paper_forward(sd, x, t, y, heads=HEADS):
    """DiT forward (§3) from the official keys: patchify, +pos, adaLN-Zero blocks, final layer."""
    w = sd["x_embedder.proj.weight"]
    d, p = w.shape[0], w.shape[2]
    n, _, hh, ww = x.shape
    h = F.conv2d(x, w, sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t[:, None] * freqs[None]
    tf = torch.cat([torch.cos(args), torch.sin(args)], -1)
    lin = lambda z, k: z @ sd[k + ".weight"].T + sd[k + ".bias"]  # noqa: E731
    temb = lin(F.silu(lin(tf, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    ln = lambda z: F.layer_norm(z, (d,), eps=1e-6)  # noqa: E731
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    hd = d // heads
    for i in range(depth):
        b = f"blocks.{i}."
        m = lin(F.silu(c), b + "adaLN_modulation.1")
        s1, sc1, g1, s2, sc2, g2 = [m[:, j * d:(j + 1) * d, None].transpose(1, 2) for j in range(6)]
        a = ln(h) * (1 + sc1) + s1
        qkv = lin(a, b + "attn.qkv").view(n, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(hd), -1) @ qkv[2]
        h = h + g1 * lin(att.transpose(1, 2).reshape(n, -1, d), b + "attn.proj")
        f = ln(h) * (1 + sc2) + s2
        f = lin(F.gelu(lin(f, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
        h = h + g2 * f
    m = lin(F.silu(c), "final_layer.adaLN_modulation.1")
    shift, scale = m[:, None, :d], m[:, None, d:]
    h = lin(ln(h) * (1 + scale) + shift, "final_layer.linear")  # (N, T, p*p*C_out)
    co = h.shape[-1] // (p * p)
    gh, gw = hh // p, ww // p
    img = torch.zeros(n, co, hh, ww)
    for i in range(gh):  # unpatchify token by token: token (i, j) holds a (p, p, C_out) patch
        for j in range(gw):
            img[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p] = h[:, i * gw + j].view(n, p, p, co).permute(0, 3, 1, 2)
    return img


def _inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, C, SIDE, SIDE, generator=g), torch.tensor([0.0, 417.0, 999.0])[:n],
            torch.tensor([3, K, 7])[:n])


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_official_weights_give_paper_outputs(learn_sigma):
    sd = official_random_state_dict(learn_sigma=learn_sigma)
    model = from_official(sd, "DiT-Test/2").eval()
    cfg = model.config
    assert (cfg.num_classes, cfg.input_size, cfg.learn_sigma, cfg.in_channels) == (K, (SIDE, SIDE), learn_sigma, C)
    x, t, y = _inputs()
    with torch.no_grad():
        ref = paper_forward(sd, x, t, y)
        out = model(x, t, y)
    assert ref.abs().max() > 0.1  # the comparison is not between zeros
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_ditlab_pos_embed_equals_mae_table():
    model = create_model("DiT-Test/2", input_size=SIDE)
    ref = torch.from_numpy(mae_pos_embed(D, SIDE // P)).float()[None]
    torch.testing.assert_close(model.pos_embed, ref, atol=1e-6, rtol=0)


def test_training_checkpoint_takes_ema_and_strips_ddp_prefix(tmp_path):
    ema, raw = official_random_state_dict(0), official_random_state_dict(1)
    ckpt = {"model": {"module." + k: v for k, v in raw.items()}, "ema": ema, "opt": {},
            "args": argparse.Namespace(model="DiT-Test/2", image_size=64)}
    path = tmp_path / "0400000.pt"
    torch.save(ckpt, path)
    model = from_official(read_checkpoint(path))  # name found from the shapes
    assert model.config.name == "DiT-Test/2"
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, ema["blocks.1.mlp.fc2.weight"])
    no_ema = from_official({"model": {"module." + k: v for k, v in raw.items()}})
    torch.testing.assert_close(no_ema.blocks[1].mlp.fc2.weight, raw["blocks.1.mlp.fc2.weight"])


def test_export_round_trip_exact():
    model = from_official(official_random_state_dict(), "DiT-Test/2")
    back = to_official(model)
    assert set(back) == set(official_random_state_dict())
    for k, v in official_random_state_dict().items():
        assert torch.equal(back[k], v), k
    with pytest.raises(ModelError, match="adaLN-Zero"):
        to_official(create_model("DiT-Test/2", block="adaLN"))


def test_missing_unexpected_and_mis_shaped_keys_are_named():
    sd = official_random_state_dict()
    sd.pop("blocks.1.attn.proj.bias")
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.1\.attn\.proj\.bias\]") as err:
        from_official(sd, "DiT-Test/2")
    assert "blocks.1.extra.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="x_embedder.proj.weight .*pick the model"):
        from_official(official_random_state_dict(), "DiT-T/2", depth=2)  # wrong width
    with pytest.raises(CheckpointError, match="x_embedder"):
        from_official({"foo": torch.zeros(1)})


def test_never_loads_partially():
    # a strict failure leaves a target untouched: exercised through the native loader
    from ditlab.models import load_state_dict_strict

    model = create_model("DiT-Test/2", input_size=SIDE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = official_random_state_dict()
    sd.pop("final_layer.linear.bias")
    with pytest.raises(CheckpointError):
        load_state_dict_strict(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unsafe_or_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "evil.pt"
    torch.save({"model": official_random_state_dict(), "x": np.dtype("float32").__class__}, bad)
    with pytest.raises(CheckpointError, match="safely"):
        read_checkpoint(bad)


def test_convert_cli(tmp_path, capsys):
    sd = official_random_state_dict()
    ckpt = tmp_path / "DiT-Test-2.pt"
    torch.save(sd, ckpt)
    out = tmp_path / "converted"
    assert main(["convert", "official", str(ckpt), str(out)]) == 0
    model = load_pretrained(out).eval()
    x, t, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), paper_forward(sd, x, t, y), rtol=1e-5, atol=1e-5)
    assert model.config.extra["converted_from"] == "official:DiT-Test-2.pt"
    back = tmp_path / "back.pt"
    assert main(["convert", "to-official", str(out), str(back)]) == 0
    again = torch.load(back, weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in sd.items())
    assert main(["convert", "official", str(tmp_path / "missing.pt"), str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err

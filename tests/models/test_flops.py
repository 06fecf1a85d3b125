"""Gflops counted on the module: the paper's Table 4 figures, a closed form, and the CLI."""
from __future__ import annotations

import json

import pytest

from ditlab.cli import main
from ditlab.errors import ModelError
from ditlab.evaluation.flops import PAPER_MODELS, count_gflops, model_gflops
from ditlab.models import create_model


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_gflops_match_paper_within_one_percent(name, reference):
    row = model_gflops(name, 256)
    assert row["params"] == reference[name]["params_256_learn_sigma_1000_classes"]
    assert row["gflops"] == pytest.approx(reference[name]["paper_gflops_256"], rel=0.01)


def test_gflops_xl2_at_512(reference):
    row = model_gflops("DiT-XL/2", 512)
    assert row["gflops"] == pytest.approx(reference["DiT-XL/2"]["paper_gflops_512"], rel=0.01)


def test_gflops_closed_form():
    # multiply-adds of a DiT forward, term by term (one image, D wide, T tokens, depth L)
    m = create_model("DiT-Test/2", input_size=(8, 12), device="meta")
    d, t, p, c, c_out, depth = 32, 4 * 6, 2, 4, 8, 2
    per_block = t * (3 * d * d + d * d + 8 * d * d) + 2 * t * t * d + 6 * d * d  # linears, QK^T and AV, adaLN
    expected = (
        t * c * p * p * d  # patchify conv
        + 256 * d + d * d  # timestep MLP
        + depth * per_block
        + 2 * d * d + t * d * p * p * c_out  # final adaLN + decoder
    )
    assert count_gflops(m) * 1e9 == pytest.approx(expected, rel=1e-9)


def test_image_size_must_divide_patch_times_downsampling():
    with pytest.raises(ModelError, match="patch 2 x autoencoder downsampling 8 = 16: use e.g. 256"):
        model_gflops("DiT-XL/2", 250)
    assert model_gflops("DiT-S/8", 64, downsample=1, in_channels=3)["gflops"] > 0


def test_cli_json(capsys):
    assert main(["flops", "DiT-S/2", "--image-size", "256", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) == {"model", "image_size", "params", "gflops"}
    assert row["model"] == "DiT-S/2" and row["image_size"] == 256
    assert row["gflops"] == pytest.approx(6.06, rel=0.01)


def test_cli_table_and_errors(capsys):
    assert main(["flops", "DiT-S/8", "DiT-B/8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model |") and len(out) == 4
    assert out[2].startswith("| DiT-S/8 | 12 | 384 | 6 | 8 | 16 | 33.1 | 0.36 |")
    assert main(["flops", "DiT-Q/2"]) == 2
    assert "choose one of" in capsys.readouterr().err

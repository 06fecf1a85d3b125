"""Registry, configs and the paper's parameter counts."""
from __future__ import annotations

import json

import pytest
import torch

from ditlab.errors import ModelError
from ditlab.models import DiTConfig, create_model, list_models, model_from_config

PAPER = [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)]


def test_registry_lists_paper_and_tiny_sizes():
    names = list_models()
    assert set(PAPER) <= set(names)
    assert {"DiT-T/2", "DiT-T/4", "DiT-T/8", "DiT-Test/2"} <= set(names)


@pytest.mark.parametrize("name", PAPER)
def test_param_counts_equal_reference(name, reference):
    ref = reference[name]
    model = create_model(name, device="meta")  # defaults: 32x32x4 latents, 1000 classes, learned sigma
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (
        ref["depth"], ref["hidden_size"], ref["num_heads"], ref["patch_size"]
    )
    assert cfg.grid_size[0] * cfg.grid_size[1] == ref["tokens_256"]
    assert sum(p.numel() for p in model.parameters()) == ref["params_256_learn_sigma_1000_classes"]


def test_param_count_closed_form_for_overrides():
    # Count by hand for an overridden size: D=64, depth 3, p=1, C=3, 10 classes, no learned sigma.
    d, depth, p, c, k, t = 64, 3, 1, 3, 10, 6 * 5
    model = create_model("DiT-Test/2", depth=depth, hidden_size=d, num_heads=4, patch_size=p,
                         in_channels=c, num_classes=k, learn_sigma=False, input_size=(6, 5))
    lin = lambda i, o: i * o + o  # noqa: E731
    per_block = lin(d, 3 * d) + lin(d, d) + lin(d, 4 * d) + lin(4 * d, d) + lin(d, 6 * d)
    expected = (
        c * p * p * d + d  # patch conv
        + t * d  # frozen sin-cos positions (counted, as in the paper's figures)
        + lin(256, d) + lin(d, d)  # timestep MLP
        + (k + 1) * d  # label table with the null row
        + depth * per_block
        + lin(d, 2 * d) + lin(d, p * p * c)  # final adaLN + decoder
    )
    assert sum(q.numel() for q in model.parameters()) == expected


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ModelError, match="DiT-XL/2") as err:
        create_model("DiT-XXL/2")
    assert "\n" not in str(err.value)


def test_unknown_override_is_named():
    with pytest.raises(ModelError, match="hidden_dim"):
        create_model("DiT-Test/2", hidden_dim=64)


@pytest.mark.parametrize("size", [31, (32, 30)])
def test_input_size_not_divisible_by_patch(size):
    with pytest.raises(ModelError, match="not divisible by patch size 4"):
        create_model("DiT-Test/2", patch_size=4, input_size=size)


def test_bad_geometry_errors():
    with pytest.raises(ModelError, match="num_heads"):
        create_model("DiT-Test/2", num_heads=3)
    with pytest.raises(ModelError, match="unknown block"):
        create_model("DiT-Test/2", block="film")
    with pytest.raises(ModelError, match="unknown model option"):
        create_model("DiT-Test/2", class_dropout_prob=0.1)  # dropout is the condition's, not the network's
    with pytest.raises(ModelError, match="labels or text, not both"):
        create_model("DiT-Test/2", num_classes=10, context_dim=8)


def test_config_round_trip_rebuilds_same_architecture(tmp_path):
    model = create_model("DiT-Test/2", input_size=(8, 12), num_classes=7, block="adaLN",
                         qk_norm=True, timestep_scale=1000.0, patch_size=1)
    d = model.config.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == "DiT-Test/2" and d["input_size"] == [8, 12]
    again = model_from_config(d)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert create_model(str(tmp_path)).config == model.config
    assert create_model(str(tmp_path / "config.json")).config == model.config


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ModelError, match="bogus"):
        DiTConfig.from_dict({"name": "DiT-S/2", "bogus": 1})


def test_model_attributes():
    m = create_model("DiT-Test/2", input_size=8, in_channels=3, num_classes=10, learn_sigma=True)
    assert (m.in_channels, m.out_channels, m.learn_sigma, m.num_classes, m.null_class) == (3, 6, True, 10, 10)
    m = create_model("DiT-Test/2", input_size=8, in_channels=3, num_classes=0, learn_sigma=False)
    assert (m.out_channels, m.null_class, m.y_embedder) == (3, 0, None)


def test_meta_device_builds_without_memory():
    m = create_model("DiT-XL/2", device="meta", input_size=64)
    assert all(p.is_meta for p in m.parameters())
    out = m(torch.zeros(2, 4, 64, 64, device="meta"), torch.zeros(2, device="meta"),
            torch.zeros(2, dtype=torch.long, device="meta"))
    assert out.shape == (2, 8, 64, 64)

"""Native model directories (config.json + model.safetensors) and label validation."""
from __future__ import annotations

import json

import pytest
import torch

from ditlab.errors import CheckpointError
from ditlab.models import create_model, load_pretrained, save_pretrained


def test_save_load_round_trip(tmp_path, randomize):
    model = randomize(create_model("DiT-Test/2", input_size=(8, 4), num_classes=5, block="cross-attention",
                                   qk_norm=True, timestep_scale=1000.0)).eval()
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    x, t, y = torch.randn(2, 4, 8, 4), torch.tensor([0.1, 0.9]), torch.tensor([0, 5])
    assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_save_other_weights(tmp_path, randomize):
    model = create_model("DiT-Test/2", input_size=8)
    ema = randomize(create_model("DiT-Test/2", input_size=8)).state_dict()
    save_pretrained(model, tmp_path, state_dict=ema)
    loaded = load_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.items())


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_pretrained(tmp_path)
    model = create_model("DiT-Test/2", input_size=8)
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hidden_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"another shape .*x_embedder\.proj\.weight \(32, 4, 2, 2\) vs \(64"):
        load_pretrained(tmp_path)
    cfg["hidden_size"], cfg["depth"] = 32, 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.2\."):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pretrained(tmp_path)

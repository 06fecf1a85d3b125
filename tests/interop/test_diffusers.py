"""diffusers' DiTTransformer2DModel: export, import and round trips, checked against its forward."""
from __future__ import annotations

import pytest
import torch

from ditlab.cli import main
from ditlab.errors import CheckpointError, ModelError
from ditlab.interop import from_diffusers, to_diffusers
from ditlab.models import create_model, load_pretrained


def _randomized(model, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _inputs(n=3, side=8, classes=10):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(n, 4, side, side, generator=g), torch.tensor([0.0, 250.5, 999.0])[:n],
            torch.tensor([1, classes, 7])[:n])


def _native_diffusers(seed=0, learn_sigma=True):
    """A diffusers DiT with random weights, its per-block embedders tied as diffusers' own are."""
    from diffusers import DiTTransformer2DModel

    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                               out_channels=8 if learn_sigma else 4, num_layers=3, sample_size=8,
                               patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6)
    _randomized(tr, seed)
    first = tr.transformer_blocks[0].norm1.emb
    for blk in tr.transformer_blocks[1:]:
        blk.norm1.emb.load_state_dict(first.state_dict())
    return tr


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_export_matches_diffusers_forward(shift):
    model = _randomized(create_model("DiT-Test/2", input_size=8, num_classes=10, timestep_freq_shift=shift))
    tr = to_diffusers(model)
    x, t, y = _inputs()
    with torch.no_grad():
        ours, theirs = model(x, t, y), tr(x, t, y).sample
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_round_trip_is_identical():
    model = _randomized(create_model("DiT-Test/2", input_size=8, num_classes=10))
    back = from_diffusers(to_diffusers(model))
    assert back.config.to_dict() == model.config.to_dict()
    sd0, sd1 = model.state_dict(), back.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    x, t, y = _inputs()
    with torch.no_grad():
        assert torch.equal(back(x, t, y), model(x, t, y))


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_import_native_diffusers_model(learn_sigma):
    tr = _native_diffusers(learn_sigma=learn_sigma)
    model = from_diffusers(tr)
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.learn_sigma) == (3, 32, 2, learn_sigma)
    assert cfg.timestep_freq_shift == 1.0  # diffusers' own sinusoid is kept
    x, t, y = _inputs()
    with torch.no_grad():
        theirs = tr(x, t, y).sample
        torch.testing.assert_close(model(x, t, y), theirs, rtol=1e-5, atol=1e-5)


def test_import_rejects_untied_embedders():
    tr = _native_diffusers()
    with torch.no_grad():
        tr.transformer_blocks[2].norm1.emb.class_embedder.embedding_table.weight[0, 0] += 1
    with pytest.raises(CheckpointError, match="block 2 has its own class_embedder"):
        from_diffusers(tr)


def test_export_refuses_what_diffusers_cannot_hold():
    for kw in (dict(block="cross-attention"), dict(qk_norm=True), dict(num_classes=0), dict(input_size=(8, 4))):
        with pytest.raises(ModelError, match="cannot hold"):
            to_diffusers(create_model("DiT-Test/2", **kw))


def test_convert_cli_diffusers_dirs(tmp_path):
    tr = _native_diffusers()
    pipe_dir = tmp_path / "pipe"
    tr.save_pretrained(str(pipe_dir / "transformer"))
    out = tmp_path / "ours"
    assert main(["convert", "diffusers", str(pipe_dir), str(out)]) == 0
    model = load_pretrained(out)
    x, t, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), tr(x, t, y).sample, rtol=1e-5, atol=1e-5)
    exported = tmp_path / "exported"
    assert main(["convert", "to-diffusers", str(out), str(exported)]) == 0
    from diffusers import DiTTransformer2DModel

    again = DiTTransformer2DModel.from_pretrained(str(exported)).eval()
    with torch.no_grad():  # shift 1 survives diffusers' own save/load
        torch.testing.assert_close(again(x, t, y).sample, tr(x, t, y).sample, rtol=1e-5, atol=1e-5)
    assert main(["convert", "diffusers", str(tmp_path / "nothing"), str(out)]) == 2


def test_loaded_models_do_not_drop_labels(tmp_path):
    """load_pretrained returns an eval-mode model whose outputs do not depend on the global RNG."""
    from ditlab.models import create_model, save_pretrained

    model = create_model("DiT-Test/2", input_size=8, in_channels=4, num_classes=10)
    with torch.no_grad():  # random weights everywhere: a fresh adaLN-Zero model outputs zeros whatever the label
        for p in model.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert not loaded.training
    x, t, y = _inputs()
    with torch.no_grad():
        torch.manual_seed(0)
        a = loaded(x, t, y)
        torch.manual_seed(1)
        b = loaded(x, t, y)
    assert torch.equal(a, b)

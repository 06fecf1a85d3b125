"""Every registered design model (MMDiT-*, SD3-medium, U-ViT-*) through one common test, and the checks of a
design against the condition the data gives."""
from __future__ import annotations

import pytest
import torch

from ditlab.errors import ModelError
from ditlab.models import DiTConfig, create_model, list_models, model_from_config
from ditlab.models.designs import DESIGN_MODELS, check_condition, text_designs

SMALL = [n for n in DESIGN_MODELS if "Test" in n]
BIG = [n for n in DESIGN_MODELS if n not in SMALL]


def _inputs(cfg: DiTConfig, device: str = "cpu", n: int = 2, h: int = 8, w: int = 8) -> dict:
    g = torch.Generator().manual_seed(0) if device == "cpu" else None
    rand = (lambda *s, **k: torch.randn(*s, generator=g)) if g else (lambda *s, **k: torch.empty(*s, device=device))
    kw = {"x": rand(n, cfg.in_channels, h, w), "t": rand(n).abs()}
    if cfg.context_dim:
        kw["context"], kw["context_mask"] = rand(n, 5, cfg.context_dim), torch.ones(n, 5, dtype=torch.bool,
                                                                                      device=device)
    if cfg.pooled_dim:
        kw["pooled"] = rand(n, cfg.pooled_dim)
    if cfg.num_classes:
        kw["y"] = torch.zeros(n, dtype=torch.long, device=device)
    return kw


def test_designs_are_listed_and_rebuilt_from_their_config():
    assert set(DESIGN_MODELS) <= set(list_models()) and "SD3-medium" in DESIGN_MODELS
    for name in DESIGN_MODELS:
        model = create_model(name, device="meta")
        again = model_from_config(model.config.to_dict(), device="meta")
        assert type(again) is type(model) and again.config == model.config


@pytest.mark.parametrize("name", SMALL)
def test_common_small(name, randomize):
    torch.manual_seed(0)
    model = create_model(name, input_size=8, **({"context_dim": 12, "pooled_dim": 6} if "MMDiT" in name else {}))
    kw = _inputs(model.config)
    model = randomize(model).eval()
    out = model(**kw)
    assert out.shape == (2, model.out_channels, 8, 8) and torch.isfinite(out).all()
    kw_other = _inputs(model.config, h=6, w=10)
    assert model(**kw_other).shape == (2, model.out_channels, 6, 10)


@pytest.mark.parametrize("name", BIG)
def test_common_big_on_meta(name):
    model = create_model(name, device="meta")
    cfg = model.config
    out = model(**_inputs(cfg, device="meta", h=cfg.input_size[0], w=cfg.input_size[1]))
    assert out.shape == (2, model.out_channels, *cfg.input_size) and out.is_meta


@pytest.mark.parametrize("block,fields,message", [
    ("mmdit", {"num_classes": 10}, "is a text-to-image design but the data gives class labels"),
    ("mmdit", {"num_classes": 0}, "but the data gives no condition"),
    ("u-vit", {"num_classes": 10}, None),
    ("u-vit", {"num_classes": 0, "context_dim": 64, "pooled_dim": 0}, None),
    ("adaLN-Zero", {"num_classes": 0, "context_dim": 64, "pooled_dim": 64}, None),  # text through pooled only
    ("adaLN-Zero", {"num_classes": 0, "context_dim": 64, "pooled_dim": 0}, "cannot see text tokens"),
    ("nope", {}, "unknown block 'nope'"),
])
def test_design_against_the_condition(block, fields, message):
    if message is None:
        check_condition(block, fields)
        return
    with pytest.raises(ModelError, match=message) as err:
        check_condition(block, fields)
    assert "\n" not in str(err.value)


def test_text_designs_are_the_ones_that_read_tokens():
    assert set(text_designs()) >= {"cross-attention", "in-context", "adaLN-Zero-in-context", "mmdit", "u-vit"}
    assert "adaLN-Zero" not in text_designs()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("setting", [True, 1])
def test_checkpointing_some_or_all_blocks_gives_the_same_gradients(name, setting, randomize):
    """grad_checkpointing N recomputes the first N blocks of every design; outputs and gradients are equal."""
    extra = {"context_dim": 12, "pooled_dim": 6} if "MMDiT" in name else {}
    model = randomize(create_model(name, input_size=8, **extra)).train()
    kw = _inputs(model.config)

    def grads():
        model.zero_grad(set_to_none=True)
        out = model(**kw)
        out.square().mean().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    out_plain, g_plain = grads()
    model.set_grad_checkpointing(setting)
    out_ckpt, g_ckpt = grads()
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert g_plain.keys() == g_ckpt.keys()
    for k in g_plain:
        torch.testing.assert_close(g_ckpt[k], g_plain[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block", ["pixart", "mmdit", "u-vit", "adaLN-Zero-in-context"])
def test_every_text_design_honours_the_learned_null(block, randomize):
    """``text_null learned``: a row without text tokens reads the design's learned null token, whatever its
    (masked) features; without ``learned_null`` the design has no such token."""
    kw = dict(input_size=8, num_classes=0, context_dim=12, pooled_dim=12, block=block)
    assert getattr(create_model("DiT-Test/2", **kw), "null_token", None) is None
    model = randomize(create_model("DiT-Test/2", learned_null=True, **kw)).eval()
    assert model.null_token is not None and model.null_token.requires_grad
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, generator=g)
    context, pooled = torch.randn(2, 5, 12, generator=g), torch.zeros(2, 12)
    empty = torch.zeros(2, 5, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, context=context, context_mask=empty, pooled=pooled)
        torch.testing.assert_close(out, model(x, t, context=-context, context_mask=empty, pooled=pooled))
        model.null_token.add_(torch.randn(model.null_token.shape, generator=g))  # (a constant: normed away)
        assert not torch.allclose(out, model(x, t, context=context, context_mask=empty, pooled=pooled), atol=1e-6)
    # rows with tokens never read it
    full = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        before = model(x, t, context=context, context_mask=full, pooled=pooled)
        model.null_token.add_(torch.randn(model.null_token.shape, generator=g))
        torch.testing.assert_close(before, model(x, t, context=context, context_mask=full, pooled=pooled))

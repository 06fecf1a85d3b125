"""EMA: the closed-form average, warm-up schedule, buffers."""
import pytest
import torch

from ditlab.training.ema import EMA, ema_decay_at


def test_warmup_schedule():
    assert ema_decay_at(0, 0.9999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999, True) == pytest.approx(91 / 100)
    assert ema_decay_at(10**7, 0.9999, True) == 0.9999
    assert ema_decay_at(0, 0.9, False) == 0.9


def test_ema_matches_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, warmup=False)
    w0 = model.weight.detach().clone()
    expected = w0.clone()
    for step in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, step)
        expected = 0.5 * expected + 0.5 * model.weight.detach()
    assert torch.allclose(ema.shadow.weight, expected)
    assert not ema.shadow.weight.requires_grad
